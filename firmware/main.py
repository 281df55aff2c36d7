"""Runs after boot.py: start the meshelect node (everything else is .mpy under app/, hw/, lib/).

On the ESP32 ``/lib`` is on ``sys.path`` already; the unix port needs ``lib`` added.
"""

import sys

if "/lib" not in sys.path and "lib" not in sys.path:
    sys.path.append("lib")

from app.runtime import main

main()
