"""Energy models: what sending, receiving, aggregating and simply living through a round cost.

Both models answer the same questions (joules, as numpy arrays over nodes), so the round loop in
``run`` charges energy the same way whatever the model:

- ``tx(bits, d)``: one packet of ``bits`` sent over distance ``d`` (m);
- ``rx(bits)``: one packet received;
- ``aggregate(bits, signals)``: an aggregator merging ``signals`` packets into one;
- ``idle(alive, heads)``: the cost of the round apart from packets (0 in the radio model).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]

# ---- the first-order radio model (Heinzelman et al., LEACH, 2002; SEP, 2004) ----------------
E_ELEC = 50e-9  # J/bit, transmitter or receiver electronics
EPS_FS = 10e-12  # J/bit/m^2, amplifier, free-space (d^2) loss below the crossover distance
EPS_MP = 0.0013e-12  # J/bit/m^4, amplifier, multipath (d^4) loss from the crossover on
E_DA = 5e-9  # J/bit/signal, data aggregation
E0 = 0.5  # J, a normal node's initial energy
PACKET_BITS = 4000


class FirstOrderRadio:
    """E_tx(k, d) = k E_elec + k eps_fs d^2 below d0 = sqrt(eps_fs / eps_mp), else k E_elec +
    k eps_mp d^4; E_rx(k) = k E_elec; aggregation k E_DA per signal merged."""

    name = "first-order radio"

    def __init__(
        self,
        e_elec: float = E_ELEC,
        eps_fs: float = EPS_FS,
        eps_mp: float = EPS_MP,
        e_da: float = E_DA,
        e0: float = E0,
    ) -> None:
        self.e_elec = e_elec
        self.eps_fs = eps_fs
        self.eps_mp = eps_mp
        self.e_da = e_da
        self.e0 = e0
        self.d0 = math.sqrt(eps_fs / eps_mp)  # 87.7 m with the constants above

    def tx(self, bits: int, d: Floats) -> Floats:
        d = np.asarray(d, dtype=float)
        amp = np.where(d < self.d0, self.eps_fs * d**2, self.eps_mp * d**4)
        return np.asarray(bits * (self.e_elec + amp))

    def rx(self, bits: int) -> float:
        return bits * self.e_elec

    def aggregate(self, bits: int, signals: NDArray[np.int64]) -> Floats:
        return np.asarray(bits * self.e_da * signals, dtype=float)

    def idle(self, alive: NDArray[np.bool_], heads: NDArray[np.bool_]) -> Floats:
        return np.zeros(alive.shape)

    def describe(self) -> str:
        return (
            "E_elec %g nJ/bit, eps_fs %g pJ/bit/m^2, eps_mp %g pJ/bit/m^4, d0 %.1f m, "
            "E_DA %g nJ/bit/signal, E0 %g J"
            % (
                self.e_elec * 1e9,
                self.eps_fs * 1e12,
                self.eps_mp * 1e12,
                self.d0,
                self.e_da * 1e9,
                self.e0,
            )
        )


# ---- an ESP32 on a battery ------------------------------------------------------------------
# Currents from the ESP32 Series Datasheet (Espressif, v4.x), sections "RF Power-Consumption
# Specifications" and "Power Consumption by Power Modes"; all at 3.3 V.
SUPPLY_V = 3.3
I_TX = 0.240  # A, transmit 802.11b 1 Mbps at +19.5 dBm (the data sheet's 180-240 mA, worst)
I_RX = 0.100  # A, receive/listen 802.11b/g/n (95-100 mA)
I_MODEM_SLEEP = 0.040  # A, modem sleep, CPU on at 160 MHz, radio off between beacons (27-44 mA)
I_DEEP_SLEEP = 10e-6  # A, deep sleep with the RTC timer and RTC memory on (10 uA)
PHY_BPS = 1_000_000  # 802.11b at 1 Mbps: the rate of the data sheet's TX figure
BATTERY_MAH = 2000.0  # a common 18650/LiPo cell
ROUND_S = 60.0  # one reading per node per minute
WAKE_S = 0.3  # a sleepy node's time awake per round (boot, radio up, send), radio listening


class Esp32:
    """Time-based: each state costs supply voltage x current x time in it.

    ``members``: ``"awake"`` keeps every node in modem sleep all round (meshelect's boards
    today: Wi-Fi on, heartbeats every 250 ms); ``"sleepy"`` lets a node that aggregates nothing
    deep-sleep and wake ``wake_s`` per round to send its reading, while an aggregator stays in
    modem sleep all round so that members can reach it. The transmit power is fixed (the radio
    does not scale its power with distance), and every node is taken to reach the sink.
    """

    name = "ESP32"

    def __init__(
        self,
        members: str = "awake",
        battery_mah: float = BATTERY_MAH,
        round_s: float = ROUND_S,
        wake_s: float = WAKE_S,
        volts: float = SUPPLY_V,
        i_tx: float = I_TX,
        i_rx: float = I_RX,
        i_modem_sleep: float = I_MODEM_SLEEP,
        i_deep_sleep: float = I_DEEP_SLEEP,
        phy_bps: float = PHY_BPS,
    ) -> None:
        if members not in ("awake", "sleepy"):
            raise ValueError("members must be 'awake' or 'sleepy'")
        if not 0 <= wake_s <= round_s:
            raise ValueError("wake_s must be within 0..round_s")
        self.members = members
        self.battery_mah = battery_mah
        self.round_s = round_s
        self.wake_s = wake_s
        self.volts = volts
        self.i_tx = i_tx
        self.i_rx = i_rx
        self.i_modem_sleep = i_modem_sleep
        self.i_deep_sleep = i_deep_sleep
        self.phy_bps = phy_bps
        self.e0 = battery_mah * 3.6 * volts  # mAh -> C (x 3.6) -> J (x V)

    def airtime(self, bits: int) -> float:
        return bits / self.phy_bps

    def tx(self, bits: int, d: Floats) -> Floats:
        return np.full(np.shape(d), self.volts * self.i_tx * self.airtime(bits))

    def rx(self, bits: int) -> float:
        return self.volts * self.i_rx * self.airtime(bits)

    def aggregate(self, bits: int, signals: NDArray[np.int64]) -> Floats:
        # A few hundred microseconds of CPU per reading: nothing next to the states below.
        return np.zeros(np.shape(signals))

    def idle(self, alive: NDArray[np.bool_], heads: NDArray[np.bool_]) -> Floats:
        awake = self.volts * self.i_modem_sleep * self.round_s
        if self.members == "awake":
            return np.where(alive, awake, 0.0)
        asleep = self.volts * (
            self.i_deep_sleep * (self.round_s - self.wake_s) + self.i_rx * self.wake_s
        )
        return np.where(alive, np.where(heads, awake, asleep), 0.0)

    def describe(self) -> str:
        return (
            "%s members, %g mAh at %g V (E0 %.0f J), rounds of %g s, TX %g mA, RX %g mA, "
            "modem sleep %g mA, deep sleep %g uA, %g Mbit/s"
            % (
                self.members,
                self.battery_mah,
                self.volts,
                self.e0,
                self.round_s,
                self.i_tx * 1e3,
                self.i_rx * 1e3,
                self.i_modem_sleep * 1e3,
                self.i_deep_sleep * 1e6,
                self.phy_bps / 1e6,
            )
        )
