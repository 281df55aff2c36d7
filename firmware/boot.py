"""Runs first at every reset: start joining Wi-Fi from config.json, and return at once.

It never waits: a board with wrong Wi-Fi settings reaches main.py (and its REPL, for
``meshelect firmware deploy``) in a second, not after minutes of retries. The runtime's
hardware layer keeps rejoining (with backoff) and sets the clock from NTP once connected,
retrying until it works. On the unix port there is no ``network`` module and nothing to do.
"""

import sys


def start_wifi(cfg):
    import network  # type: ignore[import-not-found]

    wifi = cfg.get("wifi") or {}
    if not wifi.get("ssid"):
        return
    if wifi.get("hostname"):
        try:
            network.hostname(wifi["hostname"])
        except (AttributeError, ValueError, OSError):
            pass
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    # Wi-Fi power save (firmware/README.md, "Power save"): modem sleep, the radio's default,
    # or none (every multicast heard at once, at about twice the current).
    pm = network.WLAN.PM_NONE if wifi.get("power_save") == "none" else network.WLAN.PM_PERFORMANCE
    try:
        wlan.config(pm=pm)
    except (AttributeError, ValueError, OSError):
        pass  # an older image without the setting: its default, modem sleep
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi.get("password", ""))


if sys.platform not in ("linux", "darwin"):
    try:
        from app.config import load

        start_wifi(load())
        del load  # boot.py's names outlive it: app.runtime unloads app.config after boot
    except Exception as e:  # never stop the boot: main.py must still run
        print("boot: %r" % (e,))
