"""Energy accounting: the charge a node spends, by radio state and by role.

Sans-IO and integer-only, like the rest of the core. The node application counts what it knows
(every frame it sends and every frame it receives, and the time it spends in each role); the
runtime says how the radio idles while awake (no power save, or Wi-Fi modem sleep) and adds
the time a sleepy node spends in deep sleep. From these and a board's currents (µA; the
defaults are the ESP32 data sheet's) the charge of each role is::

    awake_ms * idle + tx_us / 1000 * (tx - idle) + rx_us / 1000 * (rx - idle)
                    + slept_ms * deep                                              [µA ms]

where ``idle`` is ``awake_ua`` (radio always listening) or ``modem_ua`` (modem sleep), and
``tx_us`` / ``rx_us`` the air time of the frames sent / received: ``frame_us`` each (preamble,
headers, the radio's turnaround) plus ``byte_ns`` per byte (6 Mbit/s, a basic rate that
multicast goes at, by default). Roles
are leader, member (any other awake node: follower or candidate) and sleepy (a sleepy member,
awake or asleep). A node reports it as an ordinary reading (``reading``): per role it has
been in, ``nAh_<role>`` (nAh, µAh / 1000, spent since boot in that role: the rates
the gateway derives stay exact to a µA) and ``ms_<role>`` (ms spent in
it), plus ``mAh_cap`` (its battery's capacity setting). The gateway divides the two for each
role's rate (mA), and projects the battery's life from the rate, the capacity and the
battery level (docs/design.md, "Energy accounting").
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.score import _setting

# The roles, as ``charge`` takes them (private: a module global's name would be interned for
# the node's life on MicroPython; callers write 0, 1, 2).
_LEADER = const(0)
_MEMBER = const(1)
_SLEEPY = const(2)

# Settings of the ``[energy]`` table: name, default, lowest, highest. Currents in µA, from the
# ESP32 series data sheet (v4.x, "RF power consumption" and "power consumption by power
# modes"): transmit 802.11n at 14-19 dBm 180 mA (160-260 mA by rate and power), receive and
# listen 95 mA (95-100 mA), modem sleep at 160 MHz 40 mA (27-44 mA; 240 MHz: 30-68 mA), deep
# sleep with the RTC timer and RTC memory 10 µA. ``frame_us`` and ``byte_ns``: the air time of
# a frame, above. A 2,000 mAh cell by default.
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
_UA_MS_PER_NAH = const(3600)  # µA ms in a nAh


class Energy:
    """The charge one node spends. ``modem``: its radio idles in modem sleep while awake.
    ``sleepy``: it is a sleepy member (its only role). ``settings``: the ``[energy]`` table
    (missing keys take their defaults; a bad one raises ValueError ``energy.<name>: ...``).

    ``counts`` is one list (what a deep sleep keeps, ``state``): per role (0 leader, 1 member,
    2 sleepy) awake ms, air time sent, air time received (ms) at 0..8; ms in deep sleep (the
    sleepy role's) at 9; the µs below a ms of the two air times per role at 10..15 (kept apart,
    so that no counter passes a 32-bit board's small ints within days: a big int allocates at
    every frame). (One list, not five attributes: every attribute name is interned for the
    node's life on MicroPython.)"""

    def __init__(self, now, settings=None, modem=False, sleepy=False):
        values = []
        for name, default, lo, hi in SETTINGS:
            value = default
            if settings and settings.get(name) is not None:
                value = settings[name]
            values.append(_setting("energy", name, value, lo, hi))
        if settings:
            for name in settings:
                for row in SETTINGS:
                    if row[0] == name:
                        break
                else:
                    raise ValueError("energy.%s: unknown setting" % name)
        self.settings = (
            values  # (settings[8]: report_ms, how often an awake node reports; 0: never)
        )
        self.idle = values[3] if modem else values[2]
        self.role = _SLEEPY if sleepy else _MEMBER  # (a sleepy node's never changes)
        self.since = now
        self.counts = [0] * 16

    def tick(self, now, leader=False):
        """Book the time since the last call to the current role; then the role is the leader's
        if ``leader`` (a sleepy node's is always its own)."""
        if now > self.since:
            self.counts[3 * self.role] += now - self.since
        self.since = now
        if self.role != _SLEEPY:
            self.role = _LEADER if leader else _MEMBER

    def frame(self, sent, size):
        """One frame of ``size`` bytes sent (``sent`` True) or received, in the current role."""
        s = self.settings
        c = self.counts
        k = 10 + 2 * self.role + (0 if sent else 1)
        us = c[k] + s[5] + size * s[6] // 1000
        if us >= 1000:
            c[3 * self.role + (1 if sent else 2)] += us // 1000
            us %= 1000
        c[k] = us

    def charge(self, role):
        """µA·ms spent in ``role`` (divide by 3,600,000 for µAh)."""
        tx, rx = self.settings[0], self.settings[1]
        idle = self.idle
        c = self.counts
        k = 3 * role
        j = 10 + 2 * role
        total = (
            c[k] * idle
            + c[k + 1] * (tx - idle)
            + c[k + 2] * (rx - idle)
            + (c[j] * (tx - idle) + c[j + 1] * (rx - idle)) // 1000
        )
        if role == _SLEEPY:
            total += c[9] * self.settings[4]
        return total

    def reading(self, now):
        """The report as reading metrics: ``nAh_<role>`` and ``ms_<role>`` for each role it has
        been in, and ``mAh_cap``."""
        self.tick(now, self.role == _LEADER)
        # (Strings in a constant tuple are not interned on MicroPython; literal keys would be.)
        names = ("mAh_cap", "nAh_", "ms_", "leader", "member", "sleepy")
        out = {names[0]: self.settings[7]}
        c = self.counts
        for role in (_LEADER, _MEMBER, _SLEEPY):
            ms = c[3 * role] + (c[9] if role == _SLEEPY else 0)
            if ms:
                out[names[1] + names[3 + role]] = self.charge(role) // _UA_MS_PER_NAH
                out[names[2] + names[3 + role]] = ms
        return out

    def state(self):
        """What a sleepy node keeps across a deep sleep (``restore`` takes it back)."""
        return self.counts[:]

    def restore(self, state, ms):
        """Take back ``state`` (from ``state``; None: keep the counts) and book ``ms`` of deep
        sleep."""
        if isinstance(state, list) and len(state) == 16:
            self.counts = state[:]
        self.counts[9] += ms if ms > 0 else 0
