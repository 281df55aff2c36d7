"""The firmware's hardware helpers under MicroPython: sensor drivers on a scripted I2C bus,
battery curve, RSSI mapping, LED patterns, the unix hardware layer and config checks.

usage: micropython fw_hw.py TMPDIR     (prints one JSON line; the pytest side checks it)
"""

import json
import sys

from app import config
from hw.common import DEFAULT_CURVE, check_curve, interpolate, led_on, rssi_to_link
from hw.sensors import BME280, SHT3x, crc8_sensirion
from hw.unix import Hardware as UnixHardware

TMP = sys.argv[1]


class ScriptedBus:
    """An I2C bus that answers from a table (address, register) -> bytes; records writes."""

    def __init__(self, mem, reads=None):
        self.mem = mem
        self.reads = reads or {}
        self.writes = []

    def writeto(self, addr, data):
        self.writes.append((addr, bytes(data)))

    def readfrom(self, addr, n):
        return self.reads[addr][:n]

    def readfrom_mem(self, addr, reg, n):
        return self.mem[(addr, reg)][:n]

    def writeto_mem(self, addr, reg, data):
        self.writes.append((addr, reg, bytes(data)))


out = {}
out["crc_beef"] = crc8_sensirion(b"\xbe\xef")  # datasheet: 0x92

# SHT3x: raw T 0x6666 (25.0 C-ish), RH 0x8000 (50 %).
t_raw, h_raw = 0x6666, 0x8000
frame = bytes(
    [
        t_raw >> 8,
        t_raw & 255,
        crc8_sensirion(bytes([t_raw >> 8, t_raw & 255])),
        h_raw >> 8,
        h_raw & 255,
        crc8_sensirion(bytes([h_raw >> 8, h_raw & 255])),
    ]
)
bus = ScriptedBus({}, {0x44: frame})
m = {}
SHT3x(bus).read(m)
out["sht3x"] = [m["temp_mc"], m["humidity_mpct"], bus.writes[0][1] == b"\x24\x00"]
bad = ScriptedBus({}, {0x44: frame[:5] + bytes([frame[5] ^ 1])})
try:
    SHT3x(bad).read({})
    out["sht3x_bad_crc"] = "accepted"
except OSError:
    out["sht3x_bad_crc"] = "OSError"

# BME280 with the calibration of a real part (values from a Bosch application note example).
calib = bytes(
    [
        0x70,
        0x6B,
        0x43,
        0x67,
        0x18,
        0xFC,
        0x7D,
        0x8E,
        0x43,
        0xD6,
        0xD0,
        0x0B,
        0x27,
        0x0B,
        0x8C,
        0x00,
        0xF9,
        0xFF,
        0x8C,
        0x3C,
        0xF8,
        0xC6,
        0x70,
        0x17,
    ]
)
hcal_a1 = bytes([0x4B])
hcal_e1 = bytes([0x6D, 0x01, 0x00, 0x13, 0x2C, 0x03, 0x1E])
adc = bytes([0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6B, 0x91])  # P, T, H raw
mem = {
    (0x76, 0xD0): b"\x60",
    (0x76, 0x88): calib,
    (0x76, 0xA1): hcal_a1,
    (0x76, 0xE1): hcal_e1,
    (0x76, 0xF7): adc,
}
bme = BME280(ScriptedBus(mem))
m = {}
bme.read(m)
out["bme280"] = [m["temp_mc"], m["pressure_pa"], m["humidity_mpct"]]
out["bme280_cal"] = (
    [bme.t1, bme.t2, bme.t3] + bme.p + [bme.h1, bme.h2, bme.h3, bme.h4, bme.h5, bme.h6]
)
out["bme280_adc"] = [
    (adc[0] << 12) | (adc[1] << 4) | (adc[2] >> 4),
    (adc[3] << 12) | (adc[4] << 4) | (adc[5] >> 4),
    (adc[6] << 8) | adc[7],
]
try:
    BME280(ScriptedBus({(0x76, 0xD0): b"\x11"}))
    out["bme280_wrong_chip"] = "accepted"
except OSError:
    out["bme280_wrong_chip"] = "OSError"

out["battery"] = [interpolate(DEFAULT_CURVE, mv) for mv in (3000, 3300, 3650, 3950, 4200, 4500)]
out["curve_errors"] = []
for bad_curve in ([], [[3700, 10], [3600, 20]], [[3700, 1200]], [[1, 2, 3]]):
    try:
        check_curve(bad_curve)
        out["curve_errors"].append("accepted")
    except ValueError:
        out["curve_errors"].append("ValueError")
out["rssi"] = [rssi_to_link(r) for r in (-30, -40, -65, -90, -100)]
out["led"] = [
    led_on("leader", 10),
    led_on("follower", 50),
    led_on("follower", 500),
    led_on("candidate", 50),
    led_on("candidate", 150),
    led_on("offline", 10),
]

# Unix hardware layer: values from a file, re-read at every sample; a broken file keeps the
# last good values and is counted.
path = TMP + "/hw.json"
with open(path, "w") as f:
    f.write(json.dumps({"battery": 420, "link": 610, "mains": True, "metrics": {"t_mc": 1}}))
hw = UnixHardware({"hw": {"file": path}, "udp": {"interface": "10.94.0.9"}})
first = [hw.power(0), hw.sample(0), hw.ip()]
with open(path, "w") as f:
    f.write("{not json")
second = [hw.sample(1000), hw.power(1000), sorted(hw.errors.items())]
sim = UnixHardware(
    {"hw": {"battery": 900, "drain_per_min": 60, "temp_amplitude": 1000, "period_ms": 4000}}
)
out["unix"] = [first, second, [sim.power(0), sim.power(60000), sim.sample(0), sim.sample(2000)]]

errors = []
for bad_cfg in (
    {},
    {"node_id": ""},
    {"node_id": "a", "heartbeat_ms": 0},
    {"node_id": "a", "transport": "x"},
    {"node_id": "a", "mesh_key": "zz"},
    {"node_id": "a", "udp": 3},
):
    try:
        config.check(bad_cfg)
        errors.append("accepted")
    except config.ConfigError as e:
        errors.append(str(e).split(":")[0])
good = config.check({"node_id": "a", "mesh_key": "6b6579"})
out["config"] = [errors, good["key_bytes"] == b"key", good["heartbeat_ms"]]
print(json.dumps(out))
