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
awake or asleep). A node reports it as an ordinary reading (``energyreport.reading``): per role it has
been in, ``nAh_<role>`` (nAh, µAh / 1000, spent since boot in that role: the rates
the gateway derives stay exact to a µA) and ``ms_<role>`` (ms spent in
it), plus ``mAh_cap`` (its battery's capacity setting). The gateway divides the two for each
role's rate (mA), and projects the battery's life from the rate, the capacity and the
battery level (docs/design.md, "Energy accounting").

Here is only what runs all the time, the counting; the settings table, the report and a deep
sleep's share are ``agent/core/energyreport.py``, which a board loads only for them.
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const

# The roles, as ``energyreport.charge`` takes them (private: a module global's name would be interned for
# the node's life on MicroPython; callers write 0, 1, 2).
_LEADER = const(0)
_MEMBER = const(1)
_SLEEPY = const(2)


class Energy:
    """The charge one node spends. ``modem``: its radio idles in modem sleep while awake.
    ``sleepy``: it is a sleepy member (its only role). ``settings``: the ``[energy]`` table
    (missing keys take their defaults; a bad one raises ValueError ``energy.<name>: ...``;
    ``energyreport.SETTINGS``).

    ``counts`` is one list (what a deep sleep keeps: ``energyreport.restore``): per role (0 leader, 1 member,
    2 sleepy) awake ms, air time sent, air time received (ms) at 0..8; ms in deep sleep (the
    sleepy role's) at 9; the µs below a ms of the two air times per role at 10..15 (kept apart,
    so that no counter passes a 32-bit board's small ints within days: a big int allocates at
    every frame). (One list, not five attributes: every attribute name is interned for the
    node's life on MicroPython.)"""

    def __init__(self, now, settings=None, modem=False, sleepy=False):
        from agent.core.energyreport import SETTINGS, check

        # (energyreport.SETTINGS' order: settings[8] is report_ms, how often an awake node
        # reports; 0: never)
        values = self.settings = check("energy", SETTINGS, settings)
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
