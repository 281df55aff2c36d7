"""A deterministic in-memory mesh that runs real election cores on simulated time.

It is the test bench of the core: the replay tool, the property tests and the benchmarks all
drive it. Messages travel as ``Msg`` objects (no encoding: that is the wire codec's job, tested
on its own); each broadcast gets one delivery delay of 1..``max_delay_ms`` ms drawn from the
mesh's seeded PRNG, and each delivery may be lost to ``loss`` (per mille) or a partition.
Runs the same on CPython and MicroPython: no floats, no dict-order reliance.
"""

try:
    import heapq
except ImportError:  # pragma: no cover - very old MicroPython
    import uheapq as heapq  # type: ignore[import-not-found,no-redef]

from agent.core._compat import const
from agent.core.node import ROLE_DOWN, Config, Node
from agent.core.prng import Prng

# Event priorities within one millisecond: scenario steps, then deliveries, then timers.
_STEP = const(0)
_DELIVER = const(1)
_TICK = const(2)
_NO_TICK = const(1 << 62)  # beyond any simulated time (see node._NO_TIME)

DEFAULT_MAX_DELAY_MS = const(10)


class SimNode:
    """A node slot in the mesh: its power settings survive restarts, its Node does not."""

    def __init__(self, index, node_id, battery, link, mains, eligible):
        self.index = index
        self.id = node_id
        self.battery = battery
        self.link = link
        self.mains = mains
        self.eligible = eligible
        self.node = None
        self.boots = 0
        self.tick_at = _NO_TICK
        self.terms_started = 0  # of previous boots
        self.sent = 0  # of previous boots
        self.view = (ROLE_DOWN, 0, None)

    @property
    def up(self):
        return self.node is not None and self.node.role != ROLE_DOWN


class Mesh:
    def __init__(self, config, seed=0, max_delay_ms=DEFAULT_MAX_DELAY_MS, on_change=None):
        self.config = config if config is not None else Config()
        self.seed = seed
        self.prng = Prng(seed)
        self.max_delay_ms = max_delay_ms
        self.on_change = on_change  # called as on_change(now, simnode) after a view change
        self.nodes = {}
        self.order = []  # SimNodes sorted by id: the delivery order
        self.now = 0
        self.loss = 0
        self.groups = None  # None: everyone hears everyone; else node id -> group index
        self.messages = 0
        self.dropped = 0
        self.delivered = 0
        self._queue = []
        self._seq = 0

    # ---- building ---------------------------------------------------------------------

    def add(self, node_id, battery=1000, link=1000, mains=False, eligible=True):
        if node_id in self.nodes:
            raise ValueError("duplicate node id %r" % node_id)
        sim = SimNode(len(self.nodes), node_id, battery, link, mains, eligible)
        self.nodes[node_id] = sim
        self.order = sorted(self.nodes.values(), key=lambda s: s.id)
        return sim

    # ---- scenario operations (take effect at self.now) -----------------------------------

    def start(self, node_id):
        sim = self.nodes[node_id]
        if sim.up:
            return
        if sim.node is not None:
            sim.terms_started += sim.node.stats_terms_started
            sim.sent += sim.node.stats_sent
        sim.boots += 1
        sim.tick_at = _NO_TICK
        node = Node(sim.id, self.config, boot=sim.boots, seed=self.seed + sim.boots * 7919)
        node.set_power(sim.battery, sim.link, sim.mains, sim.eligible)
        sim.node = node
        node.start(self.now)
        self._after(sim)

    def restart(self, node_id):
        self.crash(node_id)
        self.start(node_id)

    def crash(self, node_id):
        sim = self.nodes[node_id]
        if sim.up:
            sim.node.crash()
            self._after(sim)

    def stop(self, node_id):
        sim = self.nodes[node_id]
        if sim.up:
            sim.node.stop(self.now)
            self._after(sim)

    def set_power(self, node_id, battery=None, link=None, mains=None, eligible=None):
        sim = self.nodes[node_id]
        if battery is not None:
            sim.battery = battery
        if link is not None:
            sim.link = link
        if mains is not None:
            sim.mains = mains
        if eligible is not None:
            sim.eligible = eligible
        if sim.up:
            sim.node.set_power(sim.battery, sim.link, sim.mains, sim.eligible)

    def partition(self, groups):
        table = {}
        for i, group in enumerate(groups):
            for node_id in group:
                table[node_id] = i
        self.groups = table

    def heal(self):
        self.groups = None

    def set_loss(self, per_mille):
        self.loss = per_mille

    # ---- running ----------------------------------------------------------------------

    def schedule_step(self, at, fn):
        """Call fn() at simulated time ``at`` (before deliveries and timers of that ms)."""
        self._push(at, _STEP, fn, None)

    def run_until(self, until):
        """Process every event up to and including time ``until``."""
        queue = self._queue
        pop = heapq.heappop
        while queue and queue[0][0] <= until:
            at, prio, _, a, b = pop(queue)
            self.now = at
            if prio == _DELIVER:
                self._deliver(a, b)
            elif prio == _TICK:
                if a.tick_at == at:
                    a.tick_at = _NO_TICK
                    if a.up:
                        a.node.tick(at)
                        self._after(a)
            else:
                a()
        if until > self.now:
            self.now = until

    def terms_started(self):
        total = 0
        for sim in self.order:
            total += sim.terms_started
            if sim.node is not None:
                total += sim.node.stats_terms_started
        return total

    def live(self):
        return [s for s in self.order if s.up]

    # ---- internals --------------------------------------------------------------------

    def _push(self, at, prio, a, b):
        self._seq += 1
        heapq.heappush(self._queue, (at, prio, self._seq, a, b))

    def _after(self, sim):
        """Collect what a node did: send its outbox, pass on its view changes, arrange its
        timer."""
        node = sim.node
        out = node.outbox
        if out:
            now = self.now
            for msg in out:
                self.messages += 1
                delay = 1 + self.prng.below(self.max_delay_ms)
                self._push(now + delay, _DELIVER, msg, sim)
            del out[:]
        events = node.events
        if events:
            for event in events:  # (kind, role, term, leader, reason, was): one per call
                sim.view = (event[1], event[2], event[3])
                if self.on_change is not None:
                    self.on_change(self.now, sim)
            del events[:]
        if node.role != ROLE_DOWN:
            wake = node.wakeup
            if wake < self.now:
                wake = self.now
            if wake < sim.tick_at:
                sim.tick_at = wake
                self._push(wake, _TICK, sim, None)

    def _deliver(self, msg, sender):
        groups = self.groups
        loss = self.loss
        if groups is not None:
            home = groups.get(sender.id, -1)
        now = self.now
        for sim in self.order:
            if sim is sender or not sim.up:
                continue
            if groups is not None and (home < 0 or groups.get(sim.id, -2) != home):
                self.dropped += 1
                continue
            if loss and self.prng.below(1000) < loss:
                self.dropped += 1
                continue
            self.delivered += 1
            sim.node.receive(msg, now)
            self._after(sim)
