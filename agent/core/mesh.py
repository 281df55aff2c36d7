"""A deterministic in-memory mesh that runs real election cores on simulated time.

It is the test bench of the core: the replay tool, the property tests and the benchmarks all
drive it. Messages travel as ``Msg`` objects (no encoding: that is the wire codec's job, tested
on its own); each broadcast gets one delivery delay of 1..``max_delay_ms`` ms drawn from the
mesh's seeded PRNG, and each delivery may be lost to ``loss`` (per mille) or a partition; with
``set_loss(per_mille, True)`` a lost message is lost for every receiver at once (a sender's
radio). A PROBE, and a leader's heartbeat answering one, go to the node they name alone.
Runs the same on CPython and MicroPython: no floats, no dict-order reliance.

A heartbeat that a steady follower would only book (most of them, in a settled mesh) is not
handed to each follower: it goes once into the log of the follower's cohort (agent/core/
cohort.py), which each member books when it next acts. Nodes are exact whenever the caller
looks (``run_until`` and scenario steps bring every member up to date); ``batched=False``
hands every message to every node, and a mesh with ``loss`` does too.
"""

try:
    import heapq
except ImportError:  # pragma: no cover - very old MicroPython
    import uheapq as heapq  # type: ignore[import-not-found,no-redef]

from agent.core._compat import const
from agent.core.cohort import Cohort, own_entry, shared_entry, steady
from agent.core.messages import HANDOFF
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
        self.cohort = None  # the Cohort that defers its heartbeats, if any
        self.cpos = 0  # how far it has booked its cohort's log

    @property
    def up(self):
        return self.node is not None and self.node.role != ROLE_DOWN


class Mesh:
    def __init__(
        self, config, seed=0, max_delay_ms=DEFAULT_MAX_DELAY_MS, on_change=None, batched=True
    ):
        self.config = config if config is not None else Config()
        self.seed = seed
        self.prng = Prng(seed)
        self.max_delay_ms = max_delay_ms
        # Called as on_change(now, simnode) after a view change, to read the mesh: a change
        # from there (say, a crash in the middle of a delivery) would be out of order.
        self.on_change = on_change
        self.nodes = {}
        self.order = []  # SimNodes sorted by id: the delivery order
        self.now = 0
        self.loss = 0
        self.per_frame = False  # loss: per delivery, or (True) per message for every receiver
        self.groups = None  # None: everyone hears everyone; else node id -> group index
        self.messages = 0
        self.dropped = 0
        self.delivered = 0
        self._queue = []
        self._seq = 0
        self.batched = batched
        self._cohorts = []
        self._loose = None  # the SimNodes outside cohorts, in delivery order (None: recompute)

    # ---- building ---------------------------------------------------------------------

    def add(self, node_id, battery=1000, link=1000, mains=False, eligible=True):
        if node_id in self.nodes:
            raise ValueError("duplicate node id %r" % node_id)
        sim = SimNode(len(self.nodes), node_id, battery, link, mains, eligible)
        self._dissolve_all()  # a cohort needs room for every node in each table
        self.nodes[node_id] = sim
        self.order = sorted(self.nodes.values(), key=lambda s: s.id)
        return sim

    # ---- scenario operations (take effect at self.now) -----------------------------------

    def start(self, node_id):
        sim = self.nodes[node_id]
        if sim.up:
            return
        self._sync(sim)
        if sim.node is not None:
            sim.terms_started += sim.node.stats_terms_started
            sim.sent += sim.node.sent
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
            self._sync(sim)
            sim.node.crash()
            self._after(sim)

    def stop(self, node_id):
        sim = self.nodes[node_id]
        if sim.up:
            self._sync(sim)
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
            self._sync(sim)
            sim.node.set_power(sim.battery, sim.link, sim.mains, sim.eligible)

    def partition(self, groups):
        table = {}
        for i, group in enumerate(groups):
            for node_id in group:
                table[node_id] = i
        self._dissolve_all()
        self.groups = table

    def heal(self):
        self._dissolve_all()
        self.groups = None

    def set_loss(self, per_mille, per_frame=False):
        self._dissolve_all()
        self.loss = per_mille
        self.per_frame = per_frame

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
                        if a.cohort is not None:
                            a.cohort.sync(a, at)
                        a.node.tick(at)
                        self._after(a)
            else:
                self._sync_all()
                a()
        if until > self.now:
            self.now = until
        self._sync_all()

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
        if self.batched and not self.loss:
            self._place(sim)

    def _receive(self, sim, msg):
        if self.batched:
            own_entry(sim.node.peers, msg.sender)  # receive may change the sender's entry
        sim.node.receive(msg, self.now)
        self._after(sim)

    def _deliver(self, msg, sender):
        groups = self.groups
        loss = self.loss
        home = 0
        if groups is not None:
            home = groups.get(sender.id, -1)
        receivers = self.order
        if msg.target is not None and msg.kind != HANDOFF:  # to one node (see node.py)
            sim = self.nodes.get(msg.target)
            receivers = [sim] if sim is not None else []
            if sim is not None and sim.cohort is not None:
                self._dissolve(sim.cohort)  # it acts on its own now: bring it up to date
        elif self._cohorts:
            receivers = self._defer(msg, sender, home)
        if loss and self.per_frame:
            if self.prng.below(1000) < loss:
                self.dropped += 1  # (one per message lost, not per receiver)
                return
            loss = 0  # not lost: every receiver gets it
        for sim in receivers:
            if sim is sender or not sim.up:
                continue
            if groups is not None and (home < 0 or groups.get(sim.id, -2) != home):
                self.dropped += 1
                continue
            if loss and self.prng.below(1000) < loss:
                self.dropped += 1
                continue
            self.delivered += 1
            self._receive(sim, msg)

    # ---- cohorts (agent/core/cohort.py) ------------------------------------------------

    def _defer(self, msg, sender, home):
        """Log ``msg`` for the cohorts that take it, dissolve those that do not; return the
        nodes it must still be handed to, in delivery order."""
        entry = None
        for cohort in list(self._cohorts):
            if cohort.group != home:  # (members are up; the sender counts for nobody)
                self.dropped += len(cohort.members) - (1 if sender.cohort is cohort else 0)
            elif cohort.takes(msg):
                if entry is None:
                    entry = shared_entry(msg, self.now)
                cohort.add(msg, entry, self.now)
                n = len(cohort.members)
                self.delivered += n - 1 if sender.cohort is cohort else n
                if len(cohort.log) > 4 * n + 64:
                    cohort.trim()
            else:
                self._dissolve(cohort)
        if self._loose is None:
            self._loose = [s for s in self.order if s.cohort is None]
        return self._loose

    def _place(self, sim):
        """After a node acted: keep it in its cohort, or move it to the one it now fits."""
        node = sim.node
        leader = steady(node) if node.role != ROLE_DOWN else None
        cohort = sim.cohort
        if cohort is not None:
            if leader == cohort.leader and node.term == cohort.term:
                return
            cohort.leave(sim)
            if not cohort.members:
                self._cohorts.remove(cohort)
            self._loose = None
        if leader is None or self.config.max_peers < len(self.nodes) - 1:
            return  # (a full table would evict: receive decides whom)
        group = 0
        if self.groups is not None:
            group = self.groups.get(sim.id, -2)
        for cohort in self._cohorts:
            if cohort.leader == leader and cohort.term == node.term and cohort.group == group:
                break
        else:
            cohort = Cohort(group, leader, node.term)
            self._cohorts.append(cohort)
        cohort.join(sim)
        self._loose = None

    def _sync(self, sim):
        if sim.cohort is not None:
            sim.cohort.sync(sim, self.now)

    def _sync_all(self):
        for cohort in self._cohorts:
            for sim in cohort.members.values():  # order-free: each books its own state
                cohort.sync(sim, self.now)

    def _dissolve(self, cohort):
        for sim in list(cohort.members.values()):
            cohort.sync(sim, self.now)
            cohort.leave(sim)
        self._cohorts.remove(cohort)
        self._loose = None

    def _dissolve_all(self):
        while self._cohorts:
            self._dissolve(self._cohorts[-1])
