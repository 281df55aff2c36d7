"""The ESP32 hardware layer: battery ADC, mains pin, Wi-Fi RSSI, internal temperature, I2C
sensors, watchdog and status LED. Everything is optional and configured under ``hw``:

    "hw": {"kind": "esp32",
           "battery": {"pin": 35, "divider_num": 2, "divider_den": 1,
                       "curve": [[3300, 0], [3700, 300], [4200, 1000]]},
           "mains_pin": 34, "mains_active": 1,
           "led_pin": 2, "led_active": 1,
           "i2c": {"id": 0, "sda": 21, "scl": 22, "freq": 100000},
           "sensors": [{"type": "sht3x", "addr": 68}, {"type": "bme280", "addr": 118}],
           "watchdog_ms": 8000}

A sensor that fails to initialise or read is counted in ``errors`` and skipped: one broken
sensor never stops the node. Values are integers (milli-units, per-mille).
"""

import time

import esp32  # type: ignore[import-not-found]
import machine  # type: ignore[import-not-found]
import network  # type: ignore[import-not-found]
from micropython import const  # type: ignore[import-not-found]

from hw.common import DEFAULT_CURVE, check_curve, interpolate, led_on, rssi_to_link
from hw.sensors import DRIVERS

_ADC_SAMPLES = const(16)
_BATTERY_STEP = const(20)
_NTP_RETRY_MS = const(60000)
_NTP_EVERY_MS = const(86400000)
_RTC_BYTES = const(2048)  # MicroPython's RTC user memory on an ESP32


class Hardware:
    clock_ms = 0  # where the runtime's clock starts (only the unix layer's tests move it)

    def __init__(self, cfg):
        hw = cfg.get("hw") or {}
        self.errors = {}
        self.wlan = network.WLAN(network.STA_IF)
        bat = hw.get("battery")
        self.adc = None
        if bat and "pin" in bat:
            self.adc = machine.ADC(machine.Pin(bat["pin"]))
            # 11 dB: accurate from about 150 to 2450 mV at the pin (read_uv is calibrated);
            # the divider must keep a full battery under 2450 mV.
            self.adc.atten(machine.ADC.ATTN_11DB)
            self.div_num = int(bat.get("divider_num", 2))
            self.div_den = int(bat.get("divider_den", 1))
            self.curve = check_curve(bat["curve"]) if "curve" in bat else DEFAULT_CURVE
        self._mv = None  # the smoothed battery voltage
        self._battery = None  # the per-mille last reported
        self.mains = None
        if "mains_pin" in hw:
            self.mains = machine.Pin(hw["mains_pin"], machine.Pin.IN)
            self.mains_active = int(hw.get("mains_active", 1))
        self.led = None
        if "led_pin" in hw:
            self.led = machine.Pin(hw["led_pin"], machine.Pin.OUT)
            self.led_active = int(hw.get("led_active", 1))
        self.sensors = []
        i2c_cfg = hw.get("i2c")
        if i2c_cfg:
            bus = machine.I2C(
                int(i2c_cfg.get("id", 0)),
                sda=machine.Pin(i2c_cfg["sda"]),
                scl=machine.Pin(i2c_cfg["scl"]),
                freq=int(i2c_cfg.get("freq", 100000)),
            )
            for entry in hw.get("sensors") or ():
                driver = DRIVERS.get(entry.get("type"))
                if driver is None:
                    self._count("unknown_sensor")
                    continue
                try:
                    if "addr" in entry:
                        self.sensors.append(
                            driver(bus, int(entry["addr"]), entry.get("prefix", ""))
                        )
                    else:
                        self.sensors.append(driver(bus, prefix=entry.get("prefix", "")))
                except OSError:
                    self._count("sensor_init")
        self.wifi = cfg.get("wifi") or {}
        self._wifi_retry_at = 0
        self._wifi_backoff = 1000
        self._ntp_at = 0
        self.wdt = None
        if hw.get("watchdog_ms"):
            self.wdt = machine.WDT(timeout=int(hw["watchdog_ms"]))

    def _count(self, reason):
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def battery_mv(self):
        """The battery voltage: the mean of _ADC_SAMPLES readings (a Wi-Fi transmit sags it
        for a moment), smoothed over calls (each new mean weighs an eighth: a time constant of
        about 2 s at one call per 250 ms heartbeat)."""
        if self.adc is None:
            return 0
        total = 0
        for _ in range(_ADC_SAMPLES):
            total += self.adc.read_uv()
        mv = total // (1000 * _ADC_SAMPLES) * self.div_num // self.div_den
        self._mv = mv if self._mv is None else (7 * self._mv + mv) // 8
        return self._mv

    def _battery_pm(self):
        """Per-mille with a dead band: moves only by _BATTERY_STEP or more, so a reading near
        the core's low-battery rule (200) does not flap the score."""
        pm = interpolate(self.curve, self.battery_mv())
        if self._battery is None or abs(pm - self._battery) >= _BATTERY_STEP:
            self._battery = pm
        return self._battery

    def power(self, now):
        """-> (battery per-mille, link per-mille, on mains)."""
        battery = self._battery_pm() if self.adc is not None else 1000
        mains = self.mains is not None and self.mains.value() == self.mains_active
        link = 0
        if self.wlan.isconnected():
            try:
                link = rssi_to_link(self.wlan.status("rssi"))
            except (OSError, ValueError):
                self._count("rssi")
        return battery, link, mains

    def sample(self, now):
        out = {}
        try:
            if hasattr(esp32, "mcu_temperature"):
                out["mcu_temp_mc"] = int(esp32.mcu_temperature() * 1000)
            else:  # original ESP32: Fahrenheit, uncalibrated
                out["mcu_temp_mc"] = (esp32.raw_temperature() - 32) * 5000 // 9
        except (OSError, AttributeError):
            self._count("mcu_temp")
        if self.adc is not None:
            out["battery_mv"] = self.battery_mv()
        for sensor in self.sensors:
            try:
                sensor.read(out)
            except OSError:
                self._count("sensor_read")
        return out

    def maintain(self, now):
        """Rejoin Wi-Fi after a loss, with backoff (1 s doubling to 60 s); never blocks. Not
        while the driver is associating: connect() then fails, and the driver retries itself."""
        if self.wlan.isconnected():
            self._wifi_backoff = 1000
            if now >= self._ntp_at:
                self._set_clock(now)
            return
        ssid = self.wifi.get("ssid")
        if not ssid or now < self._wifi_retry_at:
            return
        if self.wlan.status() == network.STAT_CONNECTING:
            return
        self._wifi_retry_at = now + self._wifi_backoff
        self._wifi_backoff = min(self._wifi_backoff * 2, 60000)
        try:
            self.wlan.active(True)
            self.wlan.connect(ssid, self.wifi.get("password", ""))
        except OSError:
            self._count("wifi_connect")

    def _set_clock(self, now):
        """The RTC from NTP (readings carry wall-clock time): retried every minute until it
        works, then once a day against drift. Blocks up to ntptime's 1 s timeout."""
        try:
            import ntptime  # type: ignore[import-not-found]

            ntptime.settime()
            self._ntp_at = now + _NTP_EVERY_MS
        except Exception:  # no server reachable (OSError), or no ntptime in the image
            self._count("ntp")
            self._ntp_at = now + _NTP_RETRY_MS

    def rebase(self, ms):
        """The runtime set its clock back by ``ms``: so go the Wi-Fi and NTP deadlines."""
        self._wifi_retry_at -= ms
        self._ntp_at -= ms

    def wall_s(self):
        """The RTC in Unix seconds (the ESP32 port counts from 2000; after a power-on, and
        until NTP sets it, it reads 2000-01-01)."""
        return time.time() + (946684800 if time.gmtime(0)[0] == 2000 else 0)

    def ip(self):
        return self.wlan.ifconfig()[0] if self.wlan.isconnected() else "0.0.0.0"

    def kept(self):
        """What the last deep sleep kept: RTC memory, or the flash file it points at."""
        data = machine.RTC().memory()
        if data == b"F":
            with open("sleep_state", "rb") as f:
                return f.read()
        return data

    def keep(self, data):
        if len(data) > _RTC_BYTES:  # more held readings than RTC memory takes: flash
            with open("sleep_state", "wb") as f:
                f.write(data)
            data = b"F"
        machine.RTC().memory(data)

    def deepsleep(self, ms):
        self.wlan.active(False)
        machine.deepsleep(ms)  # the chip resets when the RTC timer fires

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def show(self, state, now):
        if self.led is not None:
            self.led.value(self.led_active if led_on(state, now) else 1 - self.led_active)

    def close(self):
        if self.led is not None:
            self.led.value(1 - self.led_active)
