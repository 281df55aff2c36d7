"""Shared test helpers (import as ``from tests.helpers.broker import Mosquitto`` and so on).

- ``tools``:  find external tools; skip locally / fail in CI when one is missing.
- ``broker``: a real Mosquitto per test on a free loopback port (fixture ``mosquitto``).
- ``netns``:  ``Lab``: hosts as network namespaces on a bridge, partitions and loss via nftables.
- ``mpy``:    run code under the MicroPython unix port; compile with mpy-cross.
"""
