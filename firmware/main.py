"""Runs after boot.py: start the meshelect node (everything else is .mpy under app/, hw/, lib/).

On the ESP32 ``/lib`` is on ``sys.path`` already; the unix port needs ``lib`` added.

A board without config.json is provisioned first (``app/improv.py``: the Improv serial
protocol on the UART). An over-the-air update is switched to or rolled back before the app is
imported (``otaboot.py``).

Safe mode: every start counts one in ``boot_fails``; the app clears it after a minute of
running, or when stopped on purpose. After 3 starts in a row that did not get there
(a crash loop, a watchdog reset), main.py starts nothing: no app, no watchdog, a free REPL,
so ``meshelect firmware deploy`` (which clears the count) can install a fix.
"""

import os
import sys

# An over-the-air update to switch to, or one to roll back (otaboot.py; not in the bundle).
if "ota.json" in os.listdir():
    __import__("otaboot").boot()  # (no global: main.py's names live as long as the node)
    del sys.modules["otaboot"]

# The unix port puts the script's folder first on sys.path, as an absolute path: every module's
# __file__ (an interned name, for the process's life) would then be a long path of its own. The
# board imports by relative names ("app/runtime.mpy"); run from the build folder, do the same.
if sys.path[0] and "app" in os.listdir():
    sys.path[0] = ""
if "/lib" not in sys.path and "lib" not in sys.path:
    sys.path.append("lib")

if "config.json" not in os.listdir():
    # A new (or wiped) board: provisioning over the serial port (Improv), then a reset.
    if __import__("app.improv").improv.serve() and sys.platform not in ("linux", "darwin"):
        __import__("machine").reset()
    sys.exit(0)
try:
    with open("boot_fails") as f:
        n = int(f.read() or 0)
except (OSError, ValueError):
    n = 0
if n >= 3:  # (no named constant: one interned name less)
    print("safe mode: the app failed %d starts in a row; deploy a fix (or remove boot_fails)" % n)
else:
    try:
        with open("boot_fails", "w") as f:
            f.write(str(n + 1))
    except OSError:
        pass  # a read-only filesystem: no safe mode, the app still starts
    from app.runtime import main

    main()
