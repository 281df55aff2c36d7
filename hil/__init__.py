"""Hardware-in-the-loop testing for meshelect meshes, labgrid-style, as a pytest plugin.

- ``hil.resources``: passive descriptions (serial port, power port, virtual board, gateway)
- ``hil.labfile``: a lab TOML file -> those descriptions
- ``hil.drivers``: active code (firmware, power, console, gateway API)
- ``hil.strategy``: ``BoardStrategy``, a board from ``off`` to ``joined``, sticky on failure
- ``hil.target``: ``HilLab`` and ``Board``, a running lab as tests get it
- ``hil.lab``, ``hil.virtual``: a lab file turned into a running lab (real boards, or virtual)
- ``hil.plugin``: the pytest plugin (``--hil-lab FILE``, fixtures, ``hil_feature`` marker)

See hil/README.md.
"""
