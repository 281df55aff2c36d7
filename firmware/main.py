"""Runs after boot.py: start the meshelect node (everything else is .mpy under app/, hw/, lib/).

On the ESP32 ``/lib`` is on ``sys.path`` already; the unix port needs ``lib`` added.

What comes before the app (an update's switch or rollback, provisioning a new board, safe
mode) is ``start.py``'s, loaded for it and unloaded again: this file's code stays in the heap
for as long as the node runs from it, so it is kept to the least.
"""

import os
import sys

# The unix port puts the script's folder first on sys.path, as an absolute path: every module's
# __file__ (an interned name, for the process's life) would then be a long path of its own. The
# board imports by relative names ("app/runtime.mpy"); run from the build folder, do the same.
if sys.path[0] and "app" in os.listdir():
    sys.path[0] = ""
if "/lib" not in sys.path and "lib" not in sys.path:
    sys.path.append("lib")

if __import__("start").main():
    del sys.modules["start"]
    from app.runtime import main

    main()
