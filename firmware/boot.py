"""Runs first at every reset: join Wi-Fi from config.json, with retry and backoff, then set
the clock from NTP.

On the unix port there is no ``network`` module and nothing to do. A board that cannot join
keeps going (main.py still runs: the LED shows it, the watchdog is fed) and retries later from
the runtime, so a wrong password never bricks a board into a reset loop.
"""

import sys


def connect_wifi(cfg, attempts=5):
    import time

    import network  # type: ignore[import-not-found]

    wifi = cfg.get("wifi") or {}
    ssid = wifi.get("ssid")
    if not ssid:
        return False
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wifi.get("hostname"):
        try:
            network.hostname(wifi["hostname"])
        except (AttributeError, ValueError, OSError):
            pass
    backoff_ms = 1000
    for attempt in range(attempts):
        if wlan.isconnected():
            return True
        try:
            wlan.connect(ssid, wifi.get("password", ""))
        except OSError:
            pass
        waited = 0
        while waited < 10000 and not wlan.isconnected():
            time.sleep_ms(100)
            waited += 100
        if wlan.isconnected():
            print("wifi: %s" % (wlan.ifconfig()[0],))
            return True
        print("wifi: attempt %d failed, retry in %d ms" % (attempt + 1, backoff_ms))
        wlan.disconnect()
        time.sleep_ms(backoff_ms)
        backoff_ms = min(backoff_ms * 2, 16000)
    return False


def set_clock():
    """Readings carry wall-clock ``t_ms``; the RTC starts at 2000-01-01 without NTP."""
    import time

    import ntptime  # type: ignore[import-not-found]

    # A few tries (each times out after about a second): the boot id is drawn from this
    # clock, so a flashed board does not reuse the ids of its earlier boots (app/config.py).
    for attempt in range(3):
        try:
            ntptime.settime()
            return
        except Exception as e:  # no NTP server reachable: readings keep the RTC's time
            print("boot: no NTP time (try %d): %r" % (attempt + 1, e))
            time.sleep_ms(500)


if sys.platform not in ("linux", "darwin"):
    try:
        from app.config import load

        if connect_wifi(load()):
            set_clock()
        del load  # boot.py's names outlive it: app.runtime unloads app.config after boot
    except Exception as e:  # never stop the boot: main.py must still run
        print("boot: %r" % (e,))
