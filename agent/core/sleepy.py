"""Sleepy members: nodes that sleep between short awake periods and never lead.

Loaded only by a node configured as sleepy (the ``[sleep]`` table); sans-IO, as the rest of
the core. A sleepy node is a member that is never eligible (it never claims, never leads:
``NodeApp.set_power(..., eligible=False)``), whose heartbeats carry ``F_SLEEPY``, and whose
readings tell its leader its wake interval (``_sleep_ms`` on the first reading of
each send): the leader lists it in the mesh view while it sleeps, with that interval, so that
neither the leader nor the gateway takes it for silent until it missed its wakes.

One cycle, driven by the runtime::

    cycle = SleepCycle(settings)          # the [sleep] table: interval_ms, listen_ms, confirm_ms
    cycle.wake(app, now)                  # before app.start(now) (and restore, on a board)
    app.sample(...)                       # its readings, and its energy report
    ... run the app as usual until cycle.due(app, now) ...
    state = save(app, wall_ms)            # a board keeps it in RTC memory (or flash)
    sleep for cycle.interval_ms           # deep sleep: the process ends; the RTC timer wakes it

Awake, it listens for a leader's heartbeat for at most ``listen_ms`` (the leader it knew may be
gone: a heartbeat says who leads now, and on UDP where it is). With a leader it sends what it
holds and waits at most ``confirm_ms`` for the confirmation; everything confirmed ends the
wake at once. Readings not confirmed stay held, across sleeps and leader changes, and go again
at the next wake (to whoever leads then): exactly once holds as for any member, because the
readings keep their names. ``save`` and ``restore`` carry across a deep sleep what must go on:
the boot id (a deep sleep is no new boot), the codec's frame counter (peers would drop frames
whose counter they saw already), the next seq, the held readings, the buffer's counters and
the energy counters.
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core import energyreport

# The ``[sleep]`` table: name, default, lowest, highest (ms).
SETTINGS = (
    ("interval_ms", 60000, 1000, 86400000),
    ("listen_ms", 2000, 100, 60000),
    ("confirm_ms", 3000, 100, 60000),
)
_VERSION = const(1)  # of the saved state's layout


class SleepCycle:
    """When a sleepy node goes back to sleep. ``settings``: the ``[sleep]`` table (a bad or
    unknown setting raises ValueError ``sleep.<name>: ...``)."""

    def __init__(self, settings=None):
        values = energyreport.check("sleep", SETTINGS, settings)
        self.interval_ms, self.listen_ms, self.confirm_ms = values
        self.woke = 0
        self.found = -1  # when this wake first had a leader

    def wake(self, app, now):
        """A wake begins (before app.start, so that the heartbeat announcing it says
        F_SLEEPY): the app is made a sleepy member."""
        app.sleep_ms = app.buffer.sleep_ms = self.interval_ms
        self.woke = now
        self.found = -1

    def due(self, app, now):
        """True when the node should sleep now: no leader heard within ``listen_ms``,
        everything held confirmed, or ``confirm_ms`` since it found its leader."""
        if app.node.leader is None:
            return self.found < 0 and now - self.woke >= self.listen_ms
        if self.found < 0:
            self.found = now
        return app.buffer.depth == 0 or now - self.found >= self.confirm_ms


def save(app, wall_ms):
    """What a sleepy node keeps across a deep sleep, as a list of ints and lists (the runtime
    encodes it). ``wall_ms``: the wall clock now (0 if unknown): the next wake books the time
    asleep from it."""
    buf = app.buffer
    held = []
    for k in range(buf._used):
        slot = (buf._start + k) % buf.capacity
        pairs = buf._metrics[slot]
        if pairs is not None:
            held.append([buf._seq[slot], buf._t[slot], list(pairs)])
    energy = app.energy.counts[:] if app.energy is not None else None
    return [
        _VERSION,
        app.boot,
        app.codec.counter,
        buf._next_seq,
        [buf.taken, buf.sent, buf.resent, buf.confirmed, buf.dropped],
        energy,
        wall_ms,
        held,
    ]


def boot_of(state):
    """The boot id a saved state continues, or 0 if ``state`` is none or not valid."""
    if isinstance(state, list) and len(state) == 8 and state[0] == _VERSION:
        boot = state[1]
        if type(boot) is int and boot > 0:
            return boot
    return 0


def restore(app, state, wall_ms, interval_ms):
    """Take back a saved ``state`` into a new app of the same boot (``boot_of``): frame
    counter, seqs, held readings, counters, and the energy spent (with the time asleep: from
    the wall clock when both ends know it, else ``interval_ms``). Returns how many readings
    it held; a state it cannot read is left out (its readings are lost, counted in
    ``dropped``)."""
    if not boot_of(state) or state[1] != app.boot:
        return 0
    buf = app.buffer
    try:
        app.codec.counter = state[2]
        for seq, t_ms, pairs in state[7]:
            metrics = {}
            for k in range(0, len(pairs), 2):
                metrics[pairs[k]] = pairs[k + 1]
            buf._next_seq = seq
            buf.add(t_ms, metrics)
        buf._next_seq = state[3]
        buf.taken, buf.sent, buf.resent, buf.confirmed, buf.dropped = state[4]
    except (TypeError, ValueError):
        buf.dropped += 1
    slept = interval_ms
    if wall_ms > 0 and type(state[6]) is int and 0 < state[6] <= wall_ms:
        slept = wall_ms - state[6]
    if app.energy is not None:
        energyreport.restore(app.energy, state[5], slept)
    return buf.depth
