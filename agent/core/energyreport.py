"""The energy report, the ``[energy]`` settings and what a deep sleep adds to the counts.

The counting (``agent/core/energy.py``'s ``Energy``: every frame, every role change) runs all
the time; what is here runs when a node checks its settings (at boot), reports (every
``report_ms``) or wakes from a deep sleep. So a board loads it then and unloads it after
(firmware/app/runtime.py): its code and its table take no heap the rest of the time
(firmware/README.md, "Memory"). The formula and the report's metrics: ``energy.py``.
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.score import _setting

_SLEEPY = const(2)  # the sleepy role (energy.py's roles: 0 leader, 1 member, 2 sleepy)
_UA_MS_PER_NAH = const(3600)  # µA ms in a nAh

# Settings of the ``[energy]`` table: name, default, lowest, highest. Currents in µA, from the
# ESP32 series data sheet (v4.x, "RF power consumption" and "power consumption by power
# modes"): transmit 802.11n at 14-19 dBm 180 mA (160-260 mA by rate and power), receive and
# listen 95 mA (95-100 mA), modem sleep at 160 MHz 40 mA (27-44 mA; 240 MHz: 30-68 mA), deep
# sleep with the RTC timer and RTC memory 10 µA. ``frame_us`` and ``byte_ns``: the air time of
# a frame (energy.py). A 2,000 mAh cell by default. ``Energy.settings`` holds the values in
# this order.
SETTINGS = (
    ("tx_ua", 180000, 0, 1000000),
    ("rx_ua", 95000, 0, 1000000),
    ("awake_ua", 95000, 0, 1000000),
    ("modem_ua", 40000, 0, 1000000),
    ("deep_ua", 10, 0, 1000000),
    ("frame_us", 300, 0, 1000000),
    ("byte_ns", 1333, 0, 1000000),
    ("capacity_mah", 2000, 1, 1000000),
    ("report_ms", 60000, 0, 86400000),
)


def check(kind, rows, settings):
    """The values of a settings table (``[energy]``: ``SETTINGS``; ``[sleep]``:
    ``sleepy.SETTINGS``) in the rows' order, missing keys at their defaults; a bad or unknown
    setting raises ValueError ``<kind>.<name>: ...``."""
    values = []
    for name, default, lo, hi in rows:
        value = default
        if settings and settings.get(name) is not None:
            value = settings[name]
        values.append(_setting(kind, name, value, lo, hi))
    if settings:
        for name in settings:
            for row in rows:
                if row[0] == name:
                    break
            else:
                raise ValueError("%s.%s: unknown setting" % (kind, name))
    return values


def charge(energy, role):
    """µA·ms ``energy`` (an ``Energy``) spent in ``role`` (divide by 3,600,000 for µAh)."""
    s = energy.settings
    tx, rx = s[0], s[1]
    idle = energy.idle
    c = energy.counts
    k = 3 * role
    j = 10 + 2 * role
    total = (
        c[k] * idle
        + c[k + 1] * (tx - idle)
        + c[k + 2] * (rx - idle)
        + (c[j] * (tx - idle) + c[j + 1] * (rx - idle)) // 1000
    )
    if role == _SLEEPY:
        total += c[9] * s[4]
    return total


def reading(energy, now):
    """The report as reading metrics: ``nAh_<role>`` and ``ms_<role>`` for each role it has
    been in, and ``mAh_cap``."""
    energy.tick(now, energy.role == 0)
    # (The keys are joined at run time, so not interned on MicroPython; literal ones would be.)
    names = ("mAh_cap", "nAh_", "ms_", "leader", "member", "sleepy")
    out = {names[0]: energy.settings[7]}
    c = energy.counts
    for role in (0, 1, _SLEEPY):
        ms = c[3 * role] + (c[9] if role == _SLEEPY else 0)
        if ms:
            out[names[1] + names[3 + role]] = charge(energy, role) // _UA_MS_PER_NAH
            out[names[2] + names[3 + role]] = ms
    return out


def restore(energy, state, ms):
    """Take back the counts a deep sleep kept (``state``: a copy of ``energy.counts``; None:
    keep the counts) and book ``ms`` of deep sleep."""
    if isinstance(state, list) and len(state) == 16:
        energy.counts = state[:]
    energy.counts[9] += ms if ms > 0 else 0
