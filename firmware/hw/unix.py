"""The unix-port hardware layer: battery, link and sensors from a JSON file, or simulated.

    "hw": {"kind": "unix", "file": "/tmp/fw-1.json"}          # re-read at every sample
    "hw": {"kind": "unix", "battery": 900, "link": 800, "mains": false,
           "drain_per_min": 10, "temp_base": 21000, "temp_amplitude": 2000, "period_ms": 60000,
           "clock_ms": 1073739824}

A sleepy member's deep sleep and RTC memory (``rtc_file``) are ``hw/unixsleep.py``'s.

``clock_ms`` (a test hook) starts the runtime's clock there instead of at 0, so a test can run
a node past 2**30 ms (where a 32-bit port's small ints end) without waiting 12 days.
``clock_set_ms`` (a test hook) makes the wall clock read 2000-01-01, as a board's does after a
power-on, until that many ms after start, as if NTP set it then (-1: never).

The file holds the same keys (``battery``, ``link``, ``mains``, ``metrics``: {name: int}), so a
test or a demo can change a node's power while it runs. A missing or broken file keeps the
last good values (counted in ``errors``). The node's address is ``udp.interface`` (there is no
``network`` module on the unix port). There is no Wi-Fi, watchdog or LED to drive.
"""

import json
import time


class Hardware:
    def __init__(self, cfg):
        hw = cfg.get("hw") or {}
        self.errors = {}
        self.file = hw.get("file")
        self.battery = int(hw.get("battery", 1000))
        self.link = int(hw.get("link", 1000))
        self.mains = bool(hw.get("mains", False))
        # The simulation (drain_per_min, temp_base, temp_amplitude, period_ms) and the wall
        # clock's hook (clock_set_ms, kept as the ticks_ms at which the clock is set; None:
        # never): one tuple, not attributes (every attribute name is interned for the
        # process's life; firmware/README.md, "Memory").
        set_ms = int(hw.get("clock_set_ms", 0))
        self.sim = (
            int(hw.get("drain_per_min", 0)),
            int(hw.get("temp_base", 21000)),
            int(hw.get("temp_amplitude", 0)),
            max(1, int(hw.get("period_ms", 60000))),
            None if set_ms < 0 else time.ticks_add(time.ticks_ms(), set_ms),
        )
        self.metrics = None
        self.address = (cfg.get("udp") or {}).get("interface") or "127.0.0.1"
        self._start = None
        self.clock_ms = int(hw.get("clock_ms", 0))
        self.read()

    def read(self):
        """Re-read the file (if any): the values it has replace ours."""
        if not self.file:
            return
        try:
            with open(self.file) as f:
                data = json.load(f)
            self.battery = int(data.get("battery", self.battery))
            self.link = int(data.get("link", self.link))
            self.mains = bool(data.get("mains", self.mains))
            metrics = data.get("metrics")
            if isinstance(metrics, dict):
                self.metrics = {}
                for name in metrics:
                    self.metrics[str(name)] = int(metrics[name])
        except (OSError, ValueError, TypeError, AttributeError):
            self.errors["file"] = self.errors.get("file", 0) + 1

    def power(self, now):
        if self._start is None:
            self._start = now
        battery = self.battery
        drain = self.sim[0]
        if drain and not self.mains:
            battery = max(0, battery - (now - self._start) * drain // 60000)
        return battery, self.link, self.mains

    def sample(self, now):
        self.read()
        if self.metrics is not None:
            return dict(self.metrics)
        # A triangle wave: integer-only and deterministic, good enough for demos and tests.
        _, base, amplitude, period, _ = self.sim
        phase = now % period
        half = period // 2
        ramp = phase if phase < half else period - phase
        temp = base - amplitude + 2 * amplitude * ramp // max(1, half)
        return {"temp_mc": temp, "battery_pm": self.power(now)[0]}

    def rebase(self, ms):
        """The runtime set its clock back by ``ms`` (the battery drains from the same start)."""
        if self._start is not None:
            self._start -= ms

    def wall_s(self):
        """The wall clock in Unix seconds (see ``clock_set_ms``)."""
        at = self.sim[4]  # (clock_set_ms)
        if at is None or time.ticks_diff(time.ticks_ms(), at) < 0:
            return 946684800  # 2000-01-01: a board's clock that NTP has not set yet
        return time.time()

    def ip(self):
        return self.address

    def show(self, state=None, now=None):
        pass  # no LED on the unix port (and no *args: a call allocates nothing)

    # Nor Wi-Fi to keep up, watchdog to feed or device to close: the same do-nothing.
    maintain = feed = close = show
