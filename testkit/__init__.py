"""The test kit: real infrastructure on one machine, shared by the tests, the benches and HIL.

- ``tools``:   find external programs; ``MissingTool`` says what is missing.
- ``broker``:  ``Mosquitto``, a real broker on a free port (loopback or inside a namespace).
- ``netns``:   ``Lab``, hosts as network namespaces on a bridge; partitions and loss.
- ``mpy``:     run code under the MicroPython unix port; compile with mpy-cross.
- ``waiting``: ``poll_until``, polling with a deadline.
- ``tls``:     a throw-away CA and server certificate.
- ``gateway``: the real gateway as a process, what it stored, and leader-side batch senders.

It ships in the wheel and needs no checkout. Nothing in the product imports it.
"""
