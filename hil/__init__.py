"""Hardware-in-the-loop testing for meshelect meshes, on labgrid.

- ``hil.resources``: labgrid resources (virtual bench and board slots, gateway, broker)
- ``hil.drivers``: labgrid drivers (virtual board, esptool, deploy, console, gateway, broker,
  the Pi's agent service); importing it registers everything with labgrid's target factory
- ``hil.strategy``: ``MeshNodeStrategy``, a board from ``off`` to ``joined``, sticky on failure
- ``hil.mesh``: every board of an environment, as tests use them together
- ``hil.bench``: a virtual bench (namespaces, gateway, broker) for virtual boards
- ``hil.envcheck``: environment files checked before labgrid builds them, errors naming the key
- ``hil.farm``: a shared farm (coordinator, exporter, places, locks)
- ``hil.plugin``: the pytest plugin on top of labgrid's (``--lg-env``)

See hil/README.md.
"""
