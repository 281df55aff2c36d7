"""The ESP32 hardware layer's logic under MicroPython, with stand-ins for the board modules
(``machine``, ``network``, ``esp32`` do not exist on the unix port; real boards run the
``hardware`` tests). Prints one JSON line.
"""

import json
import sys


class FakeModule:
    pass


class Pin:
    IN = 1
    OUT = 3
    levels = {}

    def __init__(self, n, mode=None):
        self.n = n

    def value(self, v=None):
        if v is None:
            return Pin.levels.get(self.n, 0)
        Pin.levels[self.n] = v
        return None


class ADC:
    ATTN_11DB = 3
    uv = 1900000  # 1.9 V at the pin

    def __init__(self, pin):
        self.pin = pin

    def atten(self, a):
        self.a = a

    def read_uv(self):
        return ADC.uv


class WDT:
    fed = 0

    def __init__(self, timeout):
        self.timeout = timeout

    def feed(self):
        WDT.fed += 1


class I2C:
    def __init__(self, i, sda, scl, freq):
        pass

    def readfrom_mem(self, addr, reg, n):
        raise OSError(19)  # ENODEV: no sensor on the bus


class WLAN:
    connected = False
    connects = []
    state = 1000  # STAT_IDLE

    def __init__(self, iface):
        pass

    def isconnected(self):
        return WLAN.connected

    def status(self, what=None):
        return -65 if what == "rssi" else WLAN.state

    def ifconfig(self):
        return ("10.94.0.77", "255.255.255.0", "10.94.0.1", "10.94.0.1")

    def active(self, on):
        pass

    def connect(self, ssid, pw):
        WLAN.connects.append(ssid)


machine = FakeModule()
machine.Pin = Pin
machine.ADC = ADC
machine.WDT = WDT
machine.I2C = I2C
network = FakeModule()
network.WLAN = WLAN
network.STA_IF = 0
network.STAT_CONNECTING = 1001
esp32 = FakeModule()
esp32.mcu_temperature = lambda: 41.5
sys.modules["machine"] = machine
sys.modules["network"] = network
sys.modules["esp32"] = esp32
ntptime = FakeModule()
ntptime.calls = []
ntptime.settime = lambda: ntptime.calls.append(1)
sys.modules["ntptime"] = ntptime

from hw.esp32 import Hardware as Esp32Hardware

cfg = {
    "wifi": {"ssid": "lab", "password": "pw"},
    "hw": {
        "battery": {"pin": 35, "divider_num": 2, "divider_den": 1},
        "mains_pin": 34,
        "led_pin": 2,
        "i2c": {"sda": 21, "scl": 22},
        "sensors": [{"type": "bme280"}, {"type": "nope"}],
        "watchdog_ms": 8000,
    },
}
hw = Esp32Hardware(cfg)
out = {"init_errors": sorted(hw.errors.items())}
out["offline"] = [hw.power(0), hw.ip()]
Pin.levels[34] = 1
WLAN.connected = True
out["online"] = [hw.power(0), hw.ip(), hw.sample(0)]
hw.feed()
hw.show("leader", 10)
out["led_wdt"] = [Pin.levels.get(2), WDT.fed]
for t in (0, 1000, 60000):
    hw.maintain(t)  # connected: the clock is set once, then again only a day later
out["ntp_sets"] = len(ntptime.calls)
WLAN.connected = False
for t in (0, 500, 1000, 2999, 3000, 7000):
    hw.maintain(t)
out["reconnects"] = len(WLAN.connects)
WLAN.state = network.STAT_CONNECTING  # associating: the driver is at it, no connect()
hw.maintain(100000)
out["reconnects_while_associating"] = len(WLAN.connects) - out["reconnects"]
# A battery at the low-battery rule (200 per mille: 3.65 V on the default curve) whose
# readings jitter by 80 mV (a transmit sag): once settled, the reported per-mille holds still.
reported = []
for i in range(60):
    ADC.uv = 1825000 + (20000 if i % 2 else -20000)
    reported.append(hw.power(0)[0])
settled = reported[30:]
out["battery_near_low"] = [
    min(settled),
    max(settled),
    sum(1 for i in range(1, len(settled)) if settled[i] != settled[i - 1]),  # changes
    sum(1 for i in range(1, len(settled)) if (settled[i] < 200) != (settled[i - 1] < 200)),
]
print(json.dumps(out))
