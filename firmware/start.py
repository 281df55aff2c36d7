"""What main.py does before the app starts: an over-the-air update's switch or rollback,
provisioning a new board, safe mode. ``main()`` says whether the app is to start.

main.py imports this module and unloads it before it starts the app: main.py's own code stays
in the heap for as long as the node runs from it, this one's is freed. Like main.py and
``otaboot.py``, it is not in an update bundle: a broken bundle cannot break the way back.

A board without config.json is provisioned first (``app/improv.py``: the Improv serial
protocol on the UART). An over-the-air update is switched to or rolled back before the app is
imported (``otaboot.py``).

Safe mode: every start counts one in ``boot_fails``; the app clears it after a minute of
running, or when stopped on purpose. After 3 starts in a row that did not get there
(a crash loop, a watchdog reset), nothing starts: no app, no watchdog, a free REPL,
so ``meshelect firmware deploy`` (which clears the count) can install a fix.
"""

import os
import sys


def main():
    # An over-the-air update to switch to, or one to roll back (otaboot.py; not in the bundle).
    if "ota.json" in os.listdir():
        __import__("otaboot").boot()
        del sys.modules["otaboot"]
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
        print(
            "safe mode: the app failed %d starts in a row; deploy a fix (or remove boot_fails)" % n
        )
        return False
    try:
        with open("boot_fails", "w") as f:
            f.write(str(n + 1))
    except OSError:
        pass  # a read-only filesystem: no safe mode, the app still starts
    return True
