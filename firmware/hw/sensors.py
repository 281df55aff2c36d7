"""Small I2C sensor drivers: Sensirion SHT3x and Bosch BME280/BMP280.

Each driver takes a bus with the ``machine.I2C`` methods it needs (``writeto``, ``readfrom``,
``readfrom_mem``) and returns integer milli-units (21.5 C is 21500) so no float crosses the
wire. A read failure raises OSError (the caller counts it and skips that sample); a bad CRC is
an OSError too.
"""

import time

try:
    from time import sleep_ms  # type: ignore[attr-defined]
except ImportError:  # CPython (tests with a fake bus)

    def sleep_ms(ms):
        time.sleep(ms / 1000)


def crc8_sensirion(data):
    """CRC-8, polynomial 0x31, init 0xFF (SHT3x datasheet 4.12: 0xBEEF -> 0x92)."""
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SHT3x:
    """Temperature and humidity; single shot, high repeatability, no clock stretching."""

    def __init__(self, i2c, addr=0x44, prefix=""):
        self.i2c = i2c
        self.addr = addr
        self.prefix = prefix

    def read(self, out):
        self.i2c.writeto(self.addr, b"\x24\x00")
        sleep_ms(16)  # 15.5 ms worst case for high repeatability
        data = self.i2c.readfrom(self.addr, 6)
        if crc8_sensirion(data[0:2]) != data[2] or crc8_sensirion(data[3:5]) != data[5]:
            raise OSError("sht3x crc")
        raw_t = (data[0] << 8) | data[1]
        raw_h = (data[3] << 8) | data[4]
        out[self.prefix + "temp_mc"] = -45000 + 175000 * raw_t // 65535
        out[self.prefix + "humidity_mpct"] = 100000 * raw_h // 65535


class BME280:
    """Temperature, pressure (and humidity on a BME280) with the datasheet's integer formulas."""

    def __init__(self, i2c, addr=0x76, prefix=""):
        self.i2c = i2c
        self.addr = addr
        self.prefix = prefix
        chip = i2c.readfrom_mem(addr, 0xD0, 1)[0]
        if chip not in (0x58, 0x60):
            raise OSError("bme280: chip id 0x%02x" % chip)
        self.humidity = chip == 0x60
        c = i2c.readfrom_mem(addr, 0x88, 24)
        self.t1 = _u16(c, 0)
        self.t2 = _s16(c, 2)
        self.t3 = _s16(c, 4)
        self.p = [_u16(c, 6)] + [_s16(c, 8 + 2 * i) for i in range(8)]
        if self.humidity:
            self.h1 = i2c.readfrom_mem(addr, 0xA1, 1)[0]
            h = i2c.readfrom_mem(addr, 0xE1, 7)
            self.h2 = _s16(h, 0)
            self.h3 = h[2]
            self.h4 = _s8(h[3]) * 16 | (h[4] & 0x0F)
            self.h5 = _s8(h[5]) * 16 | (h[4] >> 4)
            self.h6 = _s8(h[6])

    def read(self, out):
        i2c, addr = self.i2c, self.addr
        if self.humidity:
            i2c.writeto_mem(addr, 0xF2, b"\x01")  # humidity oversampling x1
        i2c.writeto_mem(addr, 0xF4, b"\x25")  # temp x1, pressure x1, forced mode
        sleep_ms(10)
        d = i2c.readfrom_mem(addr, 0xF7, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        temp_c100, t_fine = self.compensate_t(adc_t)
        out[self.prefix + "temp_mc"] = temp_c100 * 10
        pa_q24 = self.compensate_p(adc_p, t_fine)
        if pa_q24:
            out[self.prefix + "pressure_pa"] = pa_q24 >> 8  # Pa (Q24.8 -> integer Pa)
        if self.humidity:
            out[self.prefix + "humidity_mpct"] = self.compensate_h(adc_h, t_fine) * 1000 // 1024

    # Datasheet BST-BME280-DS002 section 4.2.3, integer versions.
    def compensate_t(self, adc_t):
        var1 = (((adc_t >> 3) - (self.t1 << 1)) * self.t2) >> 11
        var2 = (((((adc_t >> 4) - self.t1) * ((adc_t >> 4) - self.t1)) >> 12) * self.t3) >> 14
        t_fine = var1 + var2
        return (t_fine * 5 + 128) >> 8, t_fine

    def compensate_p(self, adc_p, t_fine):
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self.p
        var1 = t_fine - 128000
        var2 = var1 * var1 * p6
        var2 = var2 + ((var1 * p5) << 17)
        var2 = var2 + (p4 << 35)
        var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
        var1 = (((1 << 47) + var1) * p1) >> 33
        if var1 == 0:
            return 0  # avoid a division by zero (datasheet)
        p = 1048576 - adc_p
        p = (((p << 31) - var2) * 3125) // var1
        var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (p8 * p) >> 19
        return ((p + var1 + var2) >> 8) + (p7 << 4)

    def compensate_h(self, adc_h, t_fine):
        v = t_fine - 76800
        v = ((((adc_h << 14) - (self.h4 << 20) - (self.h5 * v)) + 16384) >> 15) * (
            (
                (((((v * self.h6) >> 10) * (((v * self.h3) >> 11) + 32768)) >> 10) + 2097152)
                * self.h2
                + 8192
            )
            >> 14
        )
        v = v - (((((v >> 15) * (v >> 15)) >> 7) * self.h1) >> 4)
        v = 0 if v < 0 else v
        v = 419430400 if v > 419430400 else v
        return v >> 12  # %RH in Q22.10


def _u16(b, i):
    return b[i] | (b[i + 1] << 8)


def _s16(b, i):
    v = _u16(b, i)
    return v - 65536 if v & 0x8000 else v


def _s8(v):
    return v - 256 if v & 0x80 else v


DRIVERS = {"sht3x": SHT3x, "bme280": BME280, "bmp280": BME280}
