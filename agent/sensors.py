"""Sensor sources for the Pi agent. Every value is an int in milli-units (21.5 C -> 21500).

Sources are pluggable: each has `read(now_ms) -> {metric: int}` (missing hardware gives {}),
and power sources also answer `power(now_ms) -> (battery_per_mille | None, mains | None)`,
which feeds the election score.
"""

from __future__ import annotations

import math
import os
import random
from typing import Protocol

from agent.config import SensorConfig

THERMAL_ZONE = "/sys/class/thermal/thermal_zone0/temp"
LOADAVG = "/proc/loadavg"
POWER_SUPPLY = "/sys/class/power_supply"
WIRELESS = "/proc/net/wireless"


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


class Source(Protocol):
    name: str

    def read(self, now_ms: int) -> dict[str, int]: ...


class CpuTemperature:
    """CPU temperature from sysfs (already millidegrees Celsius)."""

    def __init__(self, path: str = "", name: str = "") -> None:
        self.path = path or THERMAL_ZONE
        self.name = name or "cpu_temp"

    def read(self, now_ms: int) -> dict[str, int]:
        text = _read_text(self.path)
        try:
            return {self.name: int(text.strip())} if text else {}
        except ValueError:
            return {}


class LoadAverage:
    """One-minute load average from procfs, times 1000."""

    def __init__(self, path: str = "", name: str = "") -> None:
        self.path = path or LOADAVG
        self.name = name or "load1"

    def read(self, now_ms: int) -> dict[str, int]:
        text = _read_text(self.path)
        try:
            return {self.name: round(float(text.split()[0]) * 1000)} if text else {}
        except (ValueError, IndexError):
            return {}


class PowerSupply:
    """Battery level (per-mille) and mains presence from /sys/class/power_supply, when present."""

    def __init__(self, root: str = "", name: str = "") -> None:
        self.root = root or POWER_SUPPLY
        self.name = name or "battery"

    def power(self, now_ms: int) -> tuple[int | None, bool | None]:
        try:
            supplies = sorted(os.listdir(self.root))
        except OSError:
            return None, None
        battery: int | None = None
        mains: bool | None = None
        for supply in supplies:
            base = os.path.join(self.root, supply)
            kind = (_read_text(os.path.join(base, "type")) or "").strip()
            if kind == "Battery" and battery is None:
                capacity = (_read_text(os.path.join(base, "capacity")) or "").strip()
                if capacity.isdigit():
                    battery = min(1000, int(capacity) * 10)
            elif kind in ("Mains", "USB"):
                online = (_read_text(os.path.join(base, "online")) or "").strip()
                if online in ("0", "1"):
                    mains = bool(mains) or online == "1"
        return battery, mains

    def read(self, now_ms: int) -> dict[str, int]:
        battery, _ = self.power(now_ms)
        return {} if battery is None else {self.name: battery}


class WirelessSignal:
    """Wi-Fi link quality from /proc/net/wireless, as per-mille (quality / 70)."""

    def __init__(self, path: str = "", name: str = "") -> None:
        self.path = path or WIRELESS
        self.name = name or "wifi_link"

    def link(self) -> int | None:
        text = _read_text(self.path)
        if not text:
            return None
        best: int | None = None
        for line in text.splitlines()[2:]:
            fields = line.replace(":", " ").split()
            if len(fields) < 3:
                continue
            try:
                quality = int(float(fields[2].rstrip(".")))
            except ValueError:
                continue
            per_mille = max(0, min(1000, quality * 1000 // 70))
            best = per_mille if best is None else max(best, per_mille)
        return best

    def read(self, now_ms: int) -> dict[str, int]:
        link = self.link()
        return {} if link is None else {self.name: link}


class Simulated:
    """Smooth sine curves plus noise, and a battery that drains (and optionally recharges).

    The battery drains `drain_per_min` per-mille a minute, plus `leader_drain_per_min` while
    this node leads (aggregating costs energy: the LEACH idea), so in a demo leadership moves
    as batteries run down. Deterministic for a given seed, so demos and tests are repeatable.
    A `battery_set_file`, when it appears, sets the level once to the per-mille number it holds
    and is deleted: `meshelect demo` drains a battery on purpose that way.
    """

    def __init__(
        self,
        metrics: dict[str, tuple[int, int, int]] | None = None,
        seed: int = 0,
        battery_start: int = 1000,
        drain_per_min: int = 0,
        recharge_below: int = 0,
        mains: bool = False,
        name: str = "",
        leader_drain_per_min: int = 0,
        battery_set_file: str = "",
    ) -> None:
        self.name = name or "simulated"
        self.metrics = metrics if metrics is not None else {"temp": (21000, 2000, 60000)}
        self.random = random.Random(seed)
        self.phase = self.random.randrange(0, 1000)
        self.drain_per_min = drain_per_min
        self.leader_drain_per_min = leader_drain_per_min
        self.recharge_below = recharge_below
        self.mains = mains
        self.battery_set_file = battery_set_file
        self.leading = False
        # Level in millionths (per-mille * 1000), integrated over time as the drain varies.
        self._level_u = battery_start * 1000
        self._last_ms: int | None = None

    def set_leading(self, leading: bool) -> None:
        self.leading = leading

    def battery(self, now_ms: int) -> int:
        if self.mains:
            return 1000
        if self._last_ms is not None and now_ms > self._last_ms:
            rate = self.drain_per_min + (self.leader_drain_per_min if self.leading else 0)
            self._level_u -= (now_ms - self._last_ms) * rate // 60
        self._last_ms = now_ms
        if self.battery_set_file:
            self._take_set_file()
        level = max(0, self._level_u // 1000)
        if self.recharge_below and level < self.recharge_below:
            # "Swap the battery": a full one, so demos run forever.
            self._level_u = 1000 * 1000
            level = 1000
        return level

    def _take_set_file(self) -> None:
        try:
            with open(self.battery_set_file) as f:
                text = f.read(32)
            os.remove(self.battery_set_file)
        except OSError:
            return  # not there: nothing asked
        try:
            level = int(text.strip())
        except ValueError:
            return  # taken and dropped: a bad request does not linger
        self._level_u = max(0, min(1000, level)) * 1000

    def power(self, now_ms: int) -> tuple[int | None, bool | None]:
        return self.battery(now_ms), self.mains

    def read(self, now_ms: int) -> dict[str, int]:
        values = {"battery": self.battery(now_ms)}
        for metric in sorted(self.metrics):
            base, amplitude, period = self.metrics[metric]
            angle = 2 * math.pi * ((now_ms + self.phase * period // 1000) % period) / period
            noise = self.random.randint(-amplitude // 20, amplitude // 20) if amplitude else 0
            values[metric] = base + int(amplitude * math.sin(angle)) + noise
        return values


def make_source(cfg: SensorConfig) -> Source:
    if cfg.type == "cpu_temp":
        return CpuTemperature(cfg.path, cfg.name)
    if cfg.type == "load":
        return LoadAverage(cfg.path, cfg.name)
    if cfg.type == "battery":
        return PowerSupply(cfg.path, cfg.name)
    if cfg.type == "wireless":
        return WirelessSignal(cfg.path, cfg.name)
    return Simulated(
        cfg.metrics or None,
        cfg.seed,
        cfg.battery_start,
        cfg.drain_per_min,
        cfg.recharge_below,
        cfg.mains,
        cfg.name,
        cfg.leader_drain_per_min,
        cfg.battery_set_file,
    )


class SensorHub:
    """All configured sources: one merged reading, and the power figures for the score."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.errors = 0

    @classmethod
    def from_config(cls, configs: list[SensorConfig]) -> SensorHub:
        return cls([make_source(c) for c in configs])

    def read(self, now_ms: int) -> dict[str, int]:
        merged: dict[str, int] = {}
        for source in self.sources:
            try:
                merged.update(source.read(now_ms))
            except Exception:  # a broken driver must not stop sampling the others
                self.errors += 1
        return merged

    def power(self, now_ms: int) -> tuple[int, bool]:
        """(battery per-mille, mains). No battery known: 1000; no mains info: no battery -> mains."""
        battery: int | None = None
        mains: bool | None = None
        for source in self.sources:
            power = getattr(source, "power", None)
            if power is None:
                continue
            level, on_mains = power(now_ms)
            if level is not None and battery is None:
                battery = level
            if on_mains is not None:
                mains = bool(mains) or on_mains
        if battery is None:
            # A Pi without a battery runs from the wall.
            return 1000, True if mains is None else mains
        return battery, bool(mains)

    def set_leading(self, leading: bool) -> None:
        """Tell simulated sources whether this node leads (they drain faster then)."""
        for source in self.sources:
            if isinstance(source, Simulated):
                source.set_leading(leading)

    def wifi_link(self) -> int | None:
        for source in self.sources:
            if isinstance(source, WirelessSignal):
                return source.link()
        return None
