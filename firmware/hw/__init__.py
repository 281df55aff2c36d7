"""Hardware layers: ``esp32`` for the board, ``unix`` for the MicroPython unix port.

Both expose the same small surface (see ``unix.UnixHardware``): ``power(now)`` ->
(battery per-mille, link per-mille, mains), ``sample(now)`` -> {metric: int milli-units},
``ip()``, ``feed()`` (watchdog), ``show(state, now)`` (LED), ``close()``.
"""


def load(cfg):
    """The hardware layer named by ``cfg["hw"]["kind"]`` (default: the board we run on)."""
    import sys

    hw = cfg.get("hw") or {}
    kind = hw.get("kind") or ("unix" if sys.platform in ("linux", "darwin") else "esp32")
    if kind == "esp32":
        from hw.esp32 import Esp32Hardware

        return Esp32Hardware(cfg)
    if kind == "unix":
        from hw.unix import UnixHardware

        return UnixHardware(cfg)
    raise ValueError("hw.kind: unknown %r (esp32 or unix)" % kind)
