# The port's usual frozen modules (asyncio, ntptime and the other network helpers from
# micropython-lib, a submodule of the MicroPython tree) plus the meshelect firmware.
include("$(PORT_DIR)/boards/manifest.py")
include("../manifest.py")
