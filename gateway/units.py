"""What a metric's integers mean: its unit, scale and kind, for the dashboard and Home Assistant.

Agents send every value as an integer in milli-units (21.5 C is ``21500``, see docs/design.md),
and fractions such as a battery level or a link quality per mille (``870`` is 87 %). A metric's
name says what it is: the first word of the name (split at ``_`` and ``-``) found in
:data:`KINDS` decides (``temperature``, ``cpu_temp`` and ``temp_c`` are temperatures,
``humidity_pct`` a humidity, ``wifi_link`` a link quality); a name with no known word is a plain
number shown as ``value / 1000``.

One table serves both readers: the gateway sends it to the dashboard in the live feed's
snapshot (``units``), and gateway/homeassistant.py gives Home Assistant the same units and
device classes. ``device_class`` is Home Assistant's sensor device class, or None.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple


class Kind(NamedTuple):
    label: str  # shown on axes and in Home Assistant
    unit: str  # "" for a plain number
    scale: float  # shown value = integer * scale
    device_class: str | None


_PERCENT_OF_MILLE = 0.1  # per mille -> percent
_MILLI = 0.001

_TEMPERATURE = Kind("temperature", "°C", _MILLI, "temperature")
_HUMIDITY = Kind("humidity", "%", _MILLI, "humidity")
_BATTERY = Kind("battery", "%", _PERCENT_OF_MILLE, "battery")
_LINK = Kind("link quality", "%", _PERCENT_OF_MILLE, None)

KINDS: dict[str, Kind] = {
    "temperature": _TEMPERATURE,
    "temp": _TEMPERATURE,
    "humidity": _HUMIDITY,
    "hum": _HUMIDITY,
    "battery": _BATTERY,
    "link": _LINK,
    "pressure": Kind("pressure", "hPa", _MILLI, "pressure"),
    "voltage": Kind("voltage", "V", _MILLI, "voltage"),
    "current": Kind("current", "A", _MILLI, "current"),
    "power": Kind("power", "W", _MILLI, "power"),
    "co2": Kind("CO2", "ppm", _MILLI, "carbon_dioxide"),
    "illuminance": Kind("illuminance", "lx", _MILLI, "illuminance"),
    "lux": Kind("illuminance", "lx", _MILLI, "illuminance"),
}
PLAIN = Kind("", "", _MILLI, None)

# The two figures every member reports besides its readings (per mille in the members view).
BATTERY = _BATTERY
LINK = _LINK

_WORDS = re.compile(r"[_\-]+")


def kind_of(metric: str) -> Kind:
    for word in _WORDS.split(metric.lower()):
        kind = KINDS.get(word)
        if kind is not None:
            return kind
    return PLAIN


def table() -> dict[str, Any]:
    """The table as the dashboard takes it (JSON): the same rule, applied in the browser."""
    return {
        "kinds": {
            word: {"label": k.label, "unit": k.unit, "scale": k.scale}
            for word, k in sorted(KINDS.items())
        },
        "plain": {"label": PLAIN.label, "unit": PLAIN.unit, "scale": PLAIN.scale},
    }
