"""The election state machine: one node's view of who leads the mesh.

Rule 1: every rule of who leads lives in this file. The node application (agent/core/app.py),
the simulator and the replay tool only feed it messages and ticks, send what it puts in
``outbox`` and read what it puts in ``events``.
Rule 2: it owns no socket, thread or clock. Time comes in as ``now``, integer milliseconds from
any monotonic origin.
Rule 3: what a role does with an event is one cell of ``MACHINE`` (below the class, and in
docs/design.md, "The election as a machine"): the dispatch on role happens there, once.

Theory of operation
-------------------
Every node broadcasts one HEARTBEAT per interval carrying its term, role, score, battery, link
and, for a follower, how long ago it last heard its leader directly. That last field is the
indirect evidence (SWIM's idea): a follower suspects its leader only when neither it nor any
peer has heard the leader for ``suspect_ms``. One lost packet, or ten, on a mesh of a dozen
nodes does not look like a death. A frame lost for every receiver at once (the sender's radio)
is no peer's evidence either; with ``probes`` > 0 the follower then asks the leader directly
(SWIM's direct probe): a PROBE to the leader alone, answered at once by a heartbeat to the
prober alone, up to ``probes`` times ``probe_ms`` apart, and suspects only if none is answered.

Terms only grow. A claim starts a new term; a leader's heartbeats carry its term; every node
follows the highest term it has seen, so a deposed leader is fenced (the gateway refuses its
batches, and no node follows it again). A node starts knowing the highest term it saw before
its boot (``term``, persisted by the runtime), a leader the gateway fences learns its term
(``fenced``), and no frame makes a node take a term without an encodable successor, or one
implausibly far above what it has seen (docs/design.md, "Terms across restarts").

Claims are ordered by rank, so one round usually settles an election with one CLAIM (bully
with scores): when the leader is suspected, every node computes its rank among the live
eligible peers it knows, and claims after ``rank * claim_slot_ms``. The best claims at once,
the others hear its claim first and follow it. A node that ranks above a claimant, and above
every live peer it knows, counters with a claim for the same term; within a term the better
claim wins. A candidate becomes leader after one claim slot without a better claim.

Hysteresis: an incumbent keeps leading until a peer is better by more than ``margin`` (15% of
the score scale by default), or its own battery falls below the low-battery threshold off
mains, or it becomes ineligible. Then it hands over: a HANDOFF names the successor, which
takes over in the next term at once; followers keep following the old leader until they hear
the successor, so no live node is ever without a leader. A graceful shutdown is a handoff with
the leaving flag.

Partition merge: a leader that hears another leader of an equal or higher term and ranks
above it claims a new term above both; the other follows. Quorum mode (``quorum`` = mesh size)
adds votes: followers answer a claim with an immediate heartbeat, a candidate needs a majority
of the mesh size (itself included) to lead, and a leader that loses its majority steps down.

The machine
-----------
Roles: down, follower, candidate, leader. Events, in the order of MACHINE's columns: a leader's
heartbeat, a follower's report (a heartbeat saying when it last heard its leader), any other
heartbeat, a claim, a handoff, a leave, a probe, the own heartbeat falling due, and the timers
(every tick). ``receive`` books what every message says (the peer table, the highest term seen),
names the event, and calls the handler of the role's cell for it in ``MACHINE`` (end of this
file); ``tick`` runs the "heartbeat due" cell (then sends the heartbeat) and the "timers" cell
of the role the node is in by then. Each cell also names the roles the node may be in after.

A follower is always in one phase, computed from its state in one place (``phase(now)``,
0..3): listening (just booted, or backing off after a failed quorum claim), following (it has
a leader), suspecting (no leader of its own, but peers heard one of its term within
``suspect_ms``: it waits for that evidence to run out) and claiming (waiting for its rank's
claim slot). Each phase has one deadline, when the follower's timers have work
(``_update_wakeup``).

Every entry point ends (``_after``) by reporting a change of view: if role, leader or term
differ from what the last event said, it appends one event to ``events``: ``("role", role,
term, leader, lead_reason, was)`` when role or leader changed, ``("term", ...)`` when only the
term did (``was``: the role the previous event showed). One call gives at most one event, the
net change: a follower that suspects its leader and claims in the same tick shows one move,
to candidate. (The kinds are strings a board has interned already: no new names.)
"""

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.messages import (
    CLAIM,
    F_CANDIDATE,
    F_LEADER,
    F_LEAVING,
    F_LOW_BATTERY,
    F_MAINS,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    PROBE,
    Msg,
)
from agent.core.peers import DEFAULT_MAX_PEERS, PeerTable
from agent.core.prng import Prng, fnv1a32
from agent.core.score import (
    DEFAULT_WEIGHTS,
    SCORE_MAX,
    Weights,
    _setting,
    better,
    compute_score,
    is_low_battery,
)

ROLE_DOWN = const(0)
ROLE_FOLLOWER = const(1)
ROLE_CANDIDATE = const(2)
ROLE_LEADER = const(3)
ROLE_NAMES = ("down", "follower", "candidate", "leader")

# Events of the machine: the columns of MACHINE, in this order (private: inlined, no names
# on a board; docs/design.md names them).
_ON_LEADER_BEAT = const(0)  # a heartbeat with F_LEADER
_ON_REPORT = const(1)  # a follower's heartbeat: it heard its leader ``heard`` ms ago
_ON_OTHER_BEAT = const(2)  # any other heartbeat: a candidate's, a leaderless node's
_ON_CLAIM = const(3)
_ON_HANDOFF = const(4)
_ON_LEAVE = const(5)
_ON_PROBE = const(6)  # a follower asks us, its leader, whether we are alive
_ON_BEAT = const(7)  # tick: our own heartbeat is due
_ON_TIMERS = const(8)  # tick: every time

# A follower's phases (``Node.phase``), in this order.
_PHASE_LISTENING = const(0)
_PHASE_FOLLOWING = const(1)
_PHASE_SUSPECTING = const(2)
_PHASE_CLAIMING = const(3)

# Why a node leads (node.lead_reason), for the gateway's election history.
_REASON_START = const("start")  # no leader was known: first election of a mesh
_REASON_CRASH = const("crash")  # the previous leader was suspected dead
_REASON_HANDOFF = const("score")  # the previous leader handed over to a better node
_REASON_BATTERY = const("battery")  # the previous leader's battery fell below the threshold
_REASON_SHUTDOWN = const("shutdown")  # the previous leader shut down gracefully
_REASON_MERGE = const("merge")  # two leaders met after a partition healed
_REASON_FENCED = const("fenced")  # the gateway knew a newer term (say, after a site restart)

MAX_NODE_ID_BYTES = const(16)  # the node_id setting: 1..16 UTF-8 bytes (the wire's bound)
HEARD_NONE = const(65535)  # "heard" field: no leader heard (also the cap of the field)
# Terms are 32-bit on the wire: a node never holds a term whose successor would not encode, so
# a frame at or above this cap is dropped (it cannot capture the mesh).
_TERM_CAP = const(0xFFFFFFFF)
# A term more than this above the highest the node has seen is implausible (a mesh makes one
# term per election): dropped and counted, unless corroborated (see ``Node.receive``).
_MAX_TERM_STEP = const(1 << 16)
# ``now`` never wraps (ms since boot), so these lie far beyond any uptime: 2**30 ms would be
# reached after 12.4 days, and every "no deadline" would then fire at once. (Not small ints
# on a 32-bit board, but so is ``now`` itself after 12.4 days.)
_NEVER = const(-(1 << 62))  # a time long before any event
_NO_TIME = const(1 << 62)  # "no deadline"

# --- Timing defaults, all in heartbeat intervals ------------------------------------------
# 250 ms heartbeats: failover under 1 s needs detection in 3 intervals plus a claim round, and
# on Wi-Fi a 250 ms interval is a few per mille of airtime for a 50-byte frame.
_DEFAULT_HEARTBEAT_MS = const(250)
# Suspect the leader after 3 intervals without any evidence (direct or reported by a peer):
# 2 would trip on two lost packets on a two-node mesh; 4 would miss the 1 s failover goal.
_SUSPECT_INTERVALS = const(3)
# A booting node listens 2 intervals before it may claim: long enough to hear the current
# leader (or a follower's report of it) even if one of its heartbeats is lost.
_LISTEN_INTERVALS = const(2)
# A peer counts as live (for ranking, handoff and quorum) if heard within 4 intervals.
_LIVE_INTERVALS = const(4)
# Peers silent for 240 intervals (60 s at 250 ms) are forgotten.
_FORGET_INTERVALS = const(240)
# A claim slot is a quarter interval: longer than a LAN/Wi-Fi delivery delay, so the best
# ranked claim is heard before the next rank's slot comes; short enough that a second-best
# claim (the best died too) costs only 62 ms.
_SLOT_DIVISOR = const(4)
_MIN_SLOT_MS = const(20)
# Probes (``probes`` > 0): a follower whose leader's evidence ran out asks it directly and
# waits max(hb / 8, 5 ms) for the answer: a LAN or Wi-Fi round trip is a few ms, and three
# unanswered probes then add about 3/8 of an interval to a failover.
_PROBE_DIVISOR = const(8)
_MIN_PROBE_MS = const(5)
_MAX_PROBES = const(10)
# A leader repeats an unanswered HANDOFF at most 3 times, then re-evaluates.
_MAX_HANDOFF_TRIES = const(3)
# Quorum mode: a failed claim backs off 2, 4, 8, 16, then 32 intervals.
_MAX_BACKOFF_DOUBLINGS = const(5)
# Hysteresis: 15% of the score scale.
_DEFAULT_MARGIN = const(150)

# --- The ranges of the settings (both runtimes' config files, and `meshelect firmware deploy`,
# take them from here: docs/design.md, "Settings") ----------------------------------------
# 20 ms: below it a claim slot (a quarter interval, at least 20 ms) is shorter than a Wi-Fi
# delivery delay. A minute: beyond it a leader's death goes unnoticed for minutes.
_MIN_HEARTBEAT_MS = const(20)
_MAX_HEARTBEAT_MS = const(60000)
# 2: one lost heartbeat must not look like a death (see _SUSPECT_INTERVALS). 100 intervals
# for suspecting, or listening after boot, is already a failover counted in minutes.
_MIN_SUSPECT_INTERVALS = const(2)
_MAX_INTERVALS = const(100)
# Mesh sizes: the quorum is the size of the whole mesh, the peer table holds what a node hears.
_MAX_QUORUM = const(1000)
_MAX_MAX_PEERS = const(4096)


class Config:
    """Election settings. Every timing derives from ``heartbeat_ms`` unless given.

    The settings are those of the config files (``heartbeat_ms`` and the ``[election]`` table;
    the ``[score]`` table is ``weights``), checked here for every runtime: a bad one raises
    ValueError ``"<key>: <problem>"`` that names it as the files do (``election.quorum``).
    """

    def __init__(
        self,
        heartbeat_ms=_DEFAULT_HEARTBEAT_MS,
        margin=_DEFAULT_MARGIN,
        quorum=0,
        max_peers=DEFAULT_MAX_PEERS,
        weights=None,
        suspect_intervals=_SUSPECT_INTERVALS,
        listen_intervals=_LISTEN_INTERVALS,
        probes=0,
        probe_ms=None,
    ):
        _setting(None, "heartbeat_ms", heartbeat_ms, _MIN_HEARTBEAT_MS, _MAX_HEARTBEAT_MS)
        _setting("election", "margin", margin, 0, SCORE_MAX)
        _setting("election", "quorum", quorum, 0, _MAX_QUORUM)  # 0: no quorum mode
        _setting("election", "max_peers", max_peers, 1, _MAX_MAX_PEERS)
        _setting(
            "election",
            "suspect_intervals",
            suspect_intervals,
            _MIN_SUSPECT_INTERVALS,
            _MAX_INTERVALS,
        )
        _setting("election", "listen_intervals", listen_intervals, 0, _MAX_INTERVALS)
        _setting("election", "probes", probes, 0, _MAX_PROBES)  # 0: suspect without asking
        if probe_ms is None:
            probe_ms = heartbeat_ms // _PROBE_DIVISOR
            if probe_ms < _MIN_PROBE_MS:
                probe_ms = _MIN_PROBE_MS
        _setting("election", "probe_ms", probe_ms, 1, _MAX_HEARTBEAT_MS)
        self.heartbeat_ms = heartbeat_ms
        self.margin = margin
        self.quorum = quorum
        self.max_peers = max_peers
        self.weights = weights if weights is not None else DEFAULT_WEIGHTS
        # Kept as given: a runtime shows its settings (the derived *_ms below are what runs).
        self.suspect_intervals = suspect_intervals
        self.listen_intervals = listen_intervals
        self.probes = probes
        self.probe_ms = probe_ms
        self.suspect_ms = heartbeat_ms * suspect_intervals
        self.listen_ms = heartbeat_ms * listen_intervals
        self.live_ms = heartbeat_ms * _LIVE_INTERVALS
        self.forget_ms = heartbeat_ms * _FORGET_INTERVALS
        # The claim slot is also the claim window: how long a candidate waits for a better claim.
        slot = heartbeat_ms // _SLOT_DIVISOR
        self.claim_slot_ms = slot if slot > _MIN_SLOT_MS else _MIN_SLOT_MS
        self.majority = quorum // 2 + 1 if quorum else 0  # quorum mode: votes needed to lead


def make_config(heartbeat_ms=_DEFAULT_HEARTBEAT_MS, election=None, score=None):
    """The ``Config`` of a node's settings as the config files hold them: ``heartbeat_ms``, the
    ``[election]`` table (margin, quorum, max_peers, suspect_intervals, listen_intervals,
    probes, probe_ms) and
    the ``[score]`` table (battery, link, low_battery). A missing (or None) setting keeps the
    core's default. Raises ValueError ``"<key>: <problem>"``, also for an unknown key.
    """
    settings = {}
    if election:
        for name in election:
            if name not in (
                "margin",
                "quorum",
                "max_peers",
                "suspect_intervals",
                "listen_intervals",
                "probes",
                "probe_ms",
            ):
                raise ValueError("election.%s: unknown setting" % name)
            if election[name] is not None:
                settings[name] = election[name]
    if score:
        weights = {}
        for name in score:
            if name not in ("battery", "link", "low_battery"):
                raise ValueError("score.%s: unknown setting" % name)
            if score[name] is not None:
                weights[name] = score[name]
        settings["weights"] = Weights(**weights)
    return Config(heartbeat_ms, **settings)


class Node:
    """One node's election state. See the module docstring for the rules."""

    def __init__(self, node_id, config=None, boot=0, seed=0, term=0):
        if not isinstance(node_id, str):
            raise TypeError("node id must be a str")
        n = len(node_id.encode())
        if n < 1 or n > MAX_NODE_ID_BYTES:
            raise ValueError("node_id: must be 1..16 UTF-8 bytes, got %r" % (node_id,))
        self.id = node_id
        self.config = config if config is not None else Config()
        self.boot = boot
        self.prng = Prng(seed ^ fnv1a32(node_id))
        self.outbox = []
        self.events = []  # view changes, for the caller to empty (see the module docstring)
        self.set_power(SCORE_MAX, SCORE_MAX)  # full battery and link until told otherwise
        self.wakeup = _NO_TIME
        # (Counters named as the status keys they fill: one interned name each on MicroPython.)
        self.sent = 0
        self.stats_terms_started = 0
        self.suspicions = 0
        self.handoffs = 0
        self.term_jumps = 0  # frames dropped for an implausible term
        # The highest term seen before this boot (persisted by the runtime): the first claim
        # goes above it, so a restarted mesh is not fenced by its own past. (Kept by start.)
        self.max_seen = term if 0 <= term < _TERM_CAP else 0
        self._jumper = None  # the sender of the last implausible term (see receive)
        self._reset(0)  # peers, role, term, leader and every timer
        self._view = [ROLE_DOWN, 0, None]  # role, term, leader: what the last event showed

    # ---- public API -------------------------------------------------------------------

    def set_power(self, battery, link, mains=False, eligible=True):
        """Update what the score is made of; the next heartbeat carries the new score."""
        self.battery = battery
        self.link = link
        self.mains = bool(mains)
        self.eligible = bool(eligible)
        self.score = compute_score(battery, link, self.mains, self.eligible, self.config.weights)

    def start(self, now):
        """Boot: listen for the current leader, announce ourselves."""
        self._reset(now)
        self.role = ROLE_FOLLOWER
        self._listen_until = now + self.config.listen_ms
        self._heartbeat(now)
        self._update_wakeup(now)
        self._after()

    def stop(self, now):
        """Graceful shutdown: a leader names its successor; anyone else says goodbye."""
        if self.role == ROLE_DOWN:
            return
        successor = None
        if self.role == ROLE_LEADER:
            successor = self.peers.best(now - self.config.live_ms)
        if successor is not None:
            self._send(Msg(HANDOFF, self.id, self.term, F_LEAVING, target=successor.id))
            self.handoffs += 1
        else:
            self._send(Msg(LEAVE, self.id, self.term))
        self.crash()

    def crash(self):
        """Silent power loss: no more messages, state gone."""
        self.role = ROLE_DOWN
        self.leader = None
        self.wakeup = _NO_TIME
        self._after()

    def tick(self, now):
        """Run timers. Call at or after ``wakeup``; calling early is harmless."""
        role = self.role
        if role == ROLE_DOWN:
            return
        if now >= self._next_hb:
            handler = MACHINE[role][2 * _ON_BEAT]
            if handler is not None:
                handler(self, None, now)
            self._heartbeat(now)
            self.peers.forget_older_than(now - self.config.forget_ms)
        handler = MACHINE[self.role][2 * _ON_TIMERS]
        if handler is not None:
            handler(self, None, now)
        self._update_wakeup(now)
        self._after()

    def receive(self, msg, now):
        """Take one decoded, authenticated message from a peer."""
        if self.role == ROLE_DOWN or msg.sender == self.id:
            return
        # A term the node may take: one whose successor encodes, and not a jump of more than
        # _MAX_TERM_STEP above the highest seen, unless the node has had no leader since boot
        # (nothing to compare with: a wiped node joining an old mesh), the sender is its own
        # leader (which learned the gateway's term), or a second sender jumps too.
        term = msg.term
        if term >= _TERM_CAP:
            self.term_jumps += 1
            return
        if term > self.max_seen + _MAX_TERM_STEP and self._had_leader:
            sender = msg.sender
            if sender != self.leader and (self._jumper is None or self._jumper == sender):
                self._jumper = sender
                self.term_jumps += 1
                return
            self._jumper = None
        event = self._learn(msg, now)
        if event < 0:
            return  # not an election message
        handler = MACHINE[self.role][2 * event]
        if handler is not None:
            handler(self, msg, now)
        self._update_wakeup(now)
        self._after()

    def fenced(self, now, term):
        """The gateway refused our batch: it holds ``term`` (say, from before a whole-site
        restart). A leader leads in a term above it at once, instead of sending nothing until
        some later election; once per leadership, so two leaders split by a partition do not
        take turns raising the fence (the second one fenced stays fenced until the heal)."""
        if (
            self.role != ROLE_LEADER
            or self.lead_reason == _REASON_FENCED
            or term < self.term
            or term + 1 >= _TERM_CAP
        ):
            return
        if term > self.max_seen:
            self.max_seen = term
        self.term = self.max_seen + 1
        self.max_seen = self.term
        self.stats_terms_started += 1
        self._become_leader(now, _REASON_FENCED)
        self._update_wakeup(now)
        self._after()

    def phase(self, now):
        """A follower's phase: 0 listening, 1 following, 2 suspecting, 3 claiming (see the
        module docstring). The one place that tells them apart."""
        if self.leader is not None:
            return _PHASE_FOLLOWING
        if now < self._listen_until:
            return _PHASE_LISTENING
        if now - self._ev_time <= self.config.suspect_ms:
            return _PHASE_SUSPECTING
        return _PHASE_CLAIMING

    @property
    def role_name(self):
        return ROLE_NAMES[self.role]

    # ---- what a message says, whoever we are --------------------------------------------

    def _learn(self, m, now):
        """Record what ``m`` tells about its sender and the terms; return its event (_ON_*),
        or -1 for a message the election does not read."""
        kind = m.kind
        if kind == HEARTBEAT:
            p = self.peers.touch(m.sender, now)
            p.score = m.score
            p.battery = m.battery
            p.link = m.link
            p.flags = m.flags
            p.term = m.term
            if m.term > self.max_seen:
                self.max_seen = m.term
            if m.flags & F_LEADER:
                return _ON_LEADER_BEAT
            if m.heard < HEARD_NONE and not m.flags & F_CANDIDATE:
                return _ON_REPORT
            return _ON_OTHER_BEAT
        if kind == CLAIM:
            p = self.peers.touch(m.sender, now)
            p.score = m.score
            p.term = m.term
            p.flags = F_CANDIDATE
            if m.term > self.max_seen:
                self.max_seen = m.term
            return _ON_CLAIM
        if kind == HANDOFF:
            self.peers.touch(m.sender, now)
            return _ON_HANDOFF
        if kind == LEAVE:
            self.peers.by_id.pop(m.sender, None)
            return _ON_LEAVE
        if kind == PROBE:
            return _ON_PROBE  # (books nothing: only the leader's answer does, as a heartbeat)
        return -1

    # ---- the follower's cells (``_on_*``: also the cells other roles share) -------------
    # The in-memory mesh defers what a steady follower does with its leader's heartbeat and
    # with a report of its own term (agent/core/cohort.py): it relies on both only booking
    # times here. tests/test_core_cohort.py fails if that stops being so.

    def _on_leader_heartbeat(self, m, now):
        sender = m.sender
        term = m.term
        if term < self.term:
            return
        if term > self.term or self.leader is None:
            self._adopt(sender, term, now)
        elif self.leader == sender:
            self._ev_time = now
            self._direct = now
        else:
            # A leader of our term we hear, against ours: the better one, or this one if we
            # have not heard ours lead for a live interval (peers' reports of "their leader"
            # may be about this one, and would keep a dead leader of ours alive, or one that
            # restarted and now follows this one: its own heartbeats are no sign it leads).
            current = self.peers.by_id.get(self.leader)
            if (
                current is None
                or self._direct < now - self.config.live_ms
                or better(m.score, sender, current.score, current.id)
            ):
                self._adopt(sender, term, now)

    def _on_report(self, m, now):
        """A peer heard its leader ``m.heard`` ms ago: evidence for (or of) a leader."""
        seen = now - m.heard
        if m.term == self.term and not self._suspected_gone:
            if seen > self._ev_time:
                self._ev_time = seen
                if (
                    self.leader is None
                    and self._suspected is not None
                    and now - seen <= self.config.suspect_ms
                ):
                    # A peer heard the leader after we gave up on it: withdraw the suspicion.
                    self.leader = self._suspected
                    self._suspected = None
                    self._claim_at = _NO_TIME
        elif m.term > self.term and self.leader is None:
            # A leader of a newer term exists; wait for it instead of claiming.
            self.term = m.term
            self._ev_time = seen
            self._suspected = None
            self._claim_at = _NO_TIME

    def _on_claim(self, m, now):
        term = m.term
        if term < self.term:
            return
        if term > self.term:
            self._newer_claim(m, now)
            return
        current = self.peers.by_id.get(self.leader)  # None when we follow nobody
        if current is None or better(m.score, m.sender, current.score, current.id):
            self._adopt(m.sender, term, now)

    def _on_leave(self, m, now):
        if self.leader == m.sender:
            self._suspect(now, True)

    # ---- the candidate's cells --------------------------------------------------------

    def _candidate_leader_beat(self, m, now):
        term = m.term
        if term > self.term or (
            term == self.term and better(m.score, m.sender, self.score, self.id)
        ):
            self._adopt(m.sender, term, now)
        else:
            self._candidate_votes(m, now)

    def _candidate_votes(self, m, now):
        """Quorum mode: every heartbeat may be the vote that completes a majority."""
        if self.config.quorum and now >= self._cand_until:
            self._candidate_timers(m, now)

    def _candidate_claim(self, m, now):
        term = m.term
        if term < self.term:
            return
        if term > self.term:
            self._newer_claim(m, now)
        elif better(m.score, m.sender, self.score, self.id):
            self._adopt(m.sender, term, now)

    # ---- the leader's cells -----------------------------------------------------------

    def _leader_leader_beat(self, m, now):
        sender = m.sender
        term = m.term
        if sender == self._handoff_to and term > self.term:
            self._adopt(sender, term, now)
        elif better(self.score, self.id, m.score, sender):
            if term >= self.term:
                self._claim(now, _REASON_MERGE)
            else:
                self._answer(m, now)
        elif term >= self.term:
            self._adopt(sender, term, now)
        # else: a better leader of a lower term; it hears our heartbeat and claims above us.

    def _leader_other_beat(self, m, now):
        if m.term > self.term and not m.flags & F_CANDIDATE:
            # A peer stuck in a newer term without a leader (say, its leader died on the far
            # side of a healed partition) ignores our older term: lead it in a term above.
            self._claim(now, _REASON_MERGE)

    def _leader_claim(self, m, now):
        term = m.term
        if term > self.term:
            self._newer_claim(m, now)
        elif term == self.term and better(m.score, m.sender, self.score, self.id):
            self._adopt(m.sender, term, now)
        else:
            self._answer(m, now)  # a stale or weaker claimant: our heartbeat corrects it

    # ---- cells every role shares ------------------------------------------------------

    def _newer_claim(self, m, now):
        """A claim for a term above ours: counter it if we rank above it and every live
        peer (bully), else follow it."""
        if self._should_counter(m.sender, m.score, now):
            if self.role == ROLE_LEADER:
                reason = self.lead_reason
            else:
                reason = _REASON_CRASH if self._had_leader else _REASON_START
            self.term = m.term
            self._become_candidate(now, reason)
        else:
            self._adopt(m.sender, m.term, now)

    def _on_handoff(self, m, now):
        if m.term < self.term:
            return
        if m.target == self.id:
            if self.score < 0:
                return
            top = self.term if self.term > m.term else m.term
            if self.max_seen > top:
                top = self.max_seen
            if top + 1 >= _TERM_CAP:
                return
            self.term = top + 1
            self.max_seen = self.term
            self.stats_terms_started += 1
            if m.flags & F_LEAVING:
                reason = _REASON_SHUTDOWN
            elif m.flags & F_LOW_BATTERY:
                reason = _REASON_BATTERY
            else:
                reason = _REASON_HANDOFF
            self._become_leader(now, reason)
            return
        if m.flags & F_LEAVING:
            self.peers.by_id.pop(m.sender, None)
            if self.leader == m.sender:
                # Keep following until the successor's heartbeat arrives, but if it never
                # does, suspect after one interval instead of the full timeout.
                self._leaving_deadline = now + self.config.heartbeat_ms

    # ---- timers -----------------------------------------------------------------------

    def _follower_timers(self, m, now):
        phase = self.phase(now)
        if phase == _PHASE_FOLLOWING:
            cfg = self.config
            ev = self._ev_time + cfg.suspect_ms  # when the evidence runs out
            if now >= self._leaving_deadline:
                self._suspect(now, True)
            elif now > ev:
                # Probes (module docstring; inline here: a method more costs a board heap).
                # A round starts when the evidence ran out after the last probe: the leader's
                # answer, a heartbeat, moves it past (so does a peer's report of a later one).
                # A probe waits ``probe_ms`` for its answer; with none left, we suspect (at
                # once with ``probes`` 0).
                # (Two fields of the leader's serve: _extra_at is when the last probe went,
                # _tries counts the probes; no new names, which a board interns for good.)
                if self._extra_at <= ev:
                    self._tries = 0
                elif now < self._extra_at + cfg.probe_ms:
                    return
                if self._tries < cfg.probes:
                    self._tries += 1
                    self._extra_at = now
                    self._send(Msg(PROBE, self.id, self.term, target=self.leader))
                else:
                    self._suspect(now, False)
        elif phase == _PHASE_SUSPECTING:
            self._claim_at = _NO_TIME  # ranks count from when the evidence runs out
        elif phase == _PHASE_CLAIMING:
            if self._claim_at == _NO_TIME:
                self._schedule_claim(now)
            if now >= self._claim_at:
                self._claim(now, _REASON_CRASH if self._had_leader else _REASON_START)

    # ---- the other timers -------------------------------------------------------------

    def _candidate_timers(self, m, now):
        if now < self._cand_until:
            return
        cfg = self.config
        if cfg.quorum:
            since = self._cand_since
            votes = self.peers.count_following(self.term, since) + 1
            if votes < cfg.majority:
                if now >= self._cand_deadline:
                    self._give_up(now)
                return
        self._become_leader(now, self._cand_reason)

    def _leader_duties(self, m, now):
        """Once per heartbeat interval, before the heartbeat goes out."""
        cfg = self.config
        since = now - cfg.live_ms
        if cfg.quorum:
            support = self.peers.count_following(self.term, since) + 1
            if support >= cfg.majority:
                self._quorum_lost_at = _NO_TIME
            elif self._quorum_lost_at == _NO_TIME:
                self._quorum_lost_at = now
            elif now - self._quorum_lost_at > cfg.suspect_ms:
                self._give_up(now)
                return
        if self._handoff_to is not None:
            if self._tries < _MAX_HANDOFF_TRIES and self._handoff_to in self.peers:
                self._tries += 1
                self._send(
                    Msg(HANDOFF, self.id, self.term, self._handoff_flags, target=self._handoff_to)
                )
                return
            self._handoff_to = None
        best = self.peers.best(since)
        if best is None:
            return
        flags = -1
        if self.score < 0:
            flags = 0
        elif (
            is_low_battery(self.battery, self.mains, cfg.weights)
            and not best.flags & F_LOW_BATTERY
            and better(best.score, best.id, self.score, self.id)
        ):
            flags = F_LOW_BATTERY
        elif best.score > self.score + cfg.margin:
            flags = 0
        if flags >= 0:
            self._handoff_to = best.id
            self._handoff_flags = flags
            self._tries = 1
            self.handoffs += 1
            self._send(Msg(HANDOFF, self.id, self.term, flags, target=best.id))

    # ---- transitions ------------------------------------------------------------------

    def _reset(self, now):
        self.peers = PeerTable(self.config.max_peers)
        del self.outbox[:]
        self.role = ROLE_DOWN
        self.term = 0
        self.leader = None
        self.lead_reason = None
        self._ev_time = _NEVER  # latest time a leader of self.term was known alive
        self._direct = _NEVER  # latest time we heard our leader ourselves
        self._suspected = None
        self._suspected_gone = False
        self._had_leader = False
        self._listen_until = now
        self._claim_at = _NO_TIME
        self._cand_until = _NO_TIME
        self._cand_since = now
        self._cand_deadline = _NO_TIME
        self._cand_reason = _REASON_START
        self._handoff_to = None
        self._handoff_flags = 0
        self._tries = 0  # a leader's HANDOFF repeats; a follower's probes of its leader
        self._quorum_lost_at = _NO_TIME
        self._failed_claims = 0
        # A leader's last answer (``_answer``), a follower's last probe: at most one probe
        # time is left when a follower starts leading (a handoff may then delay its first
        # answer to a stale claimant by under a claim slot; never without probes).
        self._extra_at = _NEVER
        self._leaving_deadline = _NO_TIME  # our leader said it is leaving: suspect then
        self._next_hb = now

    def _adopt(self, leader, term, now):
        self.term = term
        self.role = ROLE_FOLLOWER
        self.leader = leader
        self.lead_reason = None
        self._ev_time = now
        self._direct = now
        self._suspected = None
        self._suspected_gone = False
        self._had_leader = True
        self._claim_at = _NO_TIME
        self._handoff_to = None
        self._leaving_deadline = _NO_TIME
        self._listen_until = now
        if self.config.quorum:
            self._heartbeat(now)  # our vote

    def _suspect(self, now, gone):
        """Give up on our leader: it went silent, or (``gone``) it said it is leaving."""
        self.suspicions += 1
        self._leaving_deadline = _NO_TIME
        self._suspected = self.leader
        self._suspected_gone = gone
        if gone:
            self._ev_time = _NEVER  # what peers last heard of it no longer matters
        self.leader = None
        self._schedule_claim(now)
        if now >= self._claim_at:
            self._claim(now, _REASON_SHUTDOWN if gone else _REASON_CRASH)

    def _schedule_claim(self, now):
        cfg = self.config
        since = now - cfg.live_ms
        if self.score < 0:
            self._claim_at = _NO_TIME  # ineligible: never claims, waits for a leader
            return
        if cfg.quorum and self.peers.count_live(since) + 1 < cfg.majority:
            self._claim_at = _NO_TIME  # pre-vote: a claim could not win, so do not burn a term
            return
        rank = self.peers.count_better(self.score, self.id, since, self._suspected)
        self._claim_at = now + rank * cfg.claim_slot_ms

    def _claim(self, now, reason):
        top = self.term if self.term > self.max_seen else self.max_seen
        if top + 1 >= _TERM_CAP:
            # No term left to claim (only a corroborated jump gets here): wait for a leader.
            self._claim_at = _NO_TIME
            self._listen_until = now + self.config.suspect_ms
            return
        self.term = top + 1
        self.max_seen = self.term
        self.stats_terms_started += 1
        self._become_candidate(now, reason)

    def _become_candidate(self, now, reason):
        cfg = self.config
        self.role = ROLE_CANDIDATE
        self.leader = None
        self._claim_at = _NO_TIME
        self._cand_since = now
        self._cand_until = now + cfg.claim_slot_ms  # the claim window
        self._cand_deadline = now + cfg.suspect_ms
        self._cand_reason = reason
        self._send(Msg(CLAIM, self.id, self.term, 0, self.score))

    def _become_leader(self, now, reason):
        self.role = ROLE_LEADER
        self.leader = self.id
        self.lead_reason = reason
        self._ev_time = now
        self._direct = now
        self._suspected = None
        self._had_leader = True
        self._handoff_to = None
        self._quorum_lost_at = _NO_TIME
        self._failed_claims = 0
        self._heartbeat(now)

    def _give_up(self, now):
        """Quorum mode: no majority, so no leader. Back off before trying again."""
        self.role = ROLE_FOLLOWER
        self.leader = None
        self._suspected = None
        self._claim_at = _NO_TIME
        # Back off exponentially (2, 4, ... 32 intervals, plus up to one of jitter) so a
        # minority partition does not burn a term every few hundred milliseconds.
        cfg = self.config
        if self._failed_claims < _MAX_BACKOFF_DOUBLINGS:
            self._failed_claims += 1
        backoff = cfg.heartbeat_ms << self._failed_claims
        self._listen_until = now + backoff + self.prng.below(cfg.heartbeat_ms)

    def _should_counter(self, claimant, claim_score, now):
        """Bully rule: counter a claim if we rank above it and above every live peer we know."""
        if self.score < 0 or not better(self.score, self.id, claim_score, claimant):
            return False
        cfg = self.config
        mine = self.score + (cfg.margin if self.role == ROLE_LEADER else 0)
        since = now - cfg.live_ms
        fresh_leader = None
        if self.role == ROLE_FOLLOWER and now - self._ev_time <= cfg.suspect_ms:
            fresh_leader = self.leader
        for p in self.peers.by_id.values():
            if p.heard < since or p.score < 0 or p.id == claimant or p.id == self._suspected:
                continue
            theirs = p.score + (cfg.margin if p.id == fresh_leader else 0)
            if better(theirs, p.id, mine, self.id):
                return False
        return True

    # ---- sending ----------------------------------------------------------------------

    def _send(self, msg):
        self.outbox.append(msg)
        self.sent += 1

    def _heartbeat(self, now, target=None):
        """Our heartbeat to the mesh, or (``target``: a prober's id) to one node, an answer
        that leaves the broadcasts' schedule alone."""
        role = self.role
        flags = 0
        if role == ROLE_LEADER:
            flags = F_LEADER
            heard = self.peers.count_following(self.term, now - self.config.live_ms)
        else:
            if role == ROLE_CANDIDATE:
                flags = F_CANDIDATE
            heard = HEARD_NONE
            if self.leader is not None and self._direct != _NEVER:
                heard = now - self._direct
                if heard > HEARD_NONE:
                    heard = HEARD_NONE
        if self.mains:
            flags |= F_MAINS
        if is_low_battery(self.battery, self.mains, self.config.weights):
            flags |= F_LOW_BATTERY
        self._send(
            Msg(
                HEARTBEAT,
                self.id,
                self.term,
                flags,
                self.score,
                heard,
                self.battery,
                self.link,
                target,
            )
        )
        if target is not None:
            return
        cfg = self.config
        # +-1/16 interval of jitter keeps radios from colliding; the mean stays one interval.
        j = cfg.heartbeat_ms // 16
        self._next_hb = now + cfg.heartbeat_ms + (self.prng.below(2 * j + 1) - j if j else 0)

    def _answer(self, m, now):
        """An extra heartbeat: to a PROBE naming us, of our term or an older one, at once and
        to the prober alone (a broadcast would give every node an early one); to correct a
        stale claimant or leader, to all, at most once per slot."""
        if m.kind == PROBE:
            if m.target == self.id and m.term <= self.term:
                self._heartbeat(now, m.sender)
        elif now - self._extra_at >= self.config.claim_slot_ms:
            self._extra_at = now
            self._heartbeat(now)

    def _update_wakeup(self, now):
        w = self._next_hb
        role = self.role
        if role == ROLE_FOLLOWER:
            # Each phase's deadline: when _follower_timers has work.
            phase = self.phase(now)
            if phase == _PHASE_CLAIMING:
                t = self._claim_at
            elif phase == _PHASE_LISTENING:
                t = self._listen_until
            else:  # following or suspecting: the evidence runs out
                t = self._ev_time + self.config.suspect_ms + 1
                if phase == _PHASE_FOLLOWING:
                    if self._extra_at >= t:  # a probe went after that: its answer is due
                        t = self._extra_at + self.config.probe_ms
                    if self._leaving_deadline < t:
                        t = self._leaving_deadline  # our leader said it is leaving
            if t < w:
                w = t
        elif role == ROLE_CANDIDATE:
            t = self._cand_until
            if now >= t:
                t = self._cand_deadline
            if t < w:
                w = t
        elif role == ROLE_DOWN:
            w = _NO_TIME
        self.wakeup = w

    def _after(self):
        """End of every entry point: one event if the view moved since the last one."""
        view = self._view
        role = self.role
        was = view[0]
        if role != was or self.leader != view[2]:
            kind = "role"
        elif self.term != view[1]:
            kind = "term"
        else:
            return
        view[0] = role
        view[1] = self.term
        view[2] = self.leader
        self.events.append((kind, role, self.term, self.leader, self.lead_reason, was))


# The machine (docs/design.md, "The election as a machine", shows the same table;
# tests/test_core_machine.py keeps the two equal and checks the roles against simulated runs).
# One row per role; per event (the _ON_* order) two items: the handler, taking (node, msg,
# now) (msg None for the two tick events), and the roles the node may be in after it, as
# 1 << ROLE_* bits. Flat rows: a tuple per cell would cost a board about 400 bytes more.
_F = const(1 << ROLE_FOLLOWER)
_C = const(1 << ROLE_CANDIDATE)
_L = const(1 << ROLE_LEADER)
# fmt: off
MACHINE = (
    None,  # ROLE_DOWN: everything is ignored until start()
    (  # ROLE_FOLLOWER
        Node._on_leader_heartbeat, _F,          # a leader's heartbeat
        Node._on_report, _F,                    # a follower's report
        None, _F,                               # any other heartbeat
        Node._on_claim, _F | _C,                # a claim
        Node._on_handoff, _F | _L,              # a handoff
        Node._on_leave, _F | _C,                # a leave
        None, _F,                               # a probe
        None, _F,                               # our heartbeat is due
        Node._follower_timers, _F | _C,         # timers
    ),
    (  # ROLE_CANDIDATE
        Node._candidate_leader_beat, _F | _C | _L,
        Node._candidate_votes, _F | _C | _L,
        Node._candidate_votes, _F | _C | _L,
        Node._candidate_claim, _F | _C,
        Node._on_handoff, _C | _L,
        None, _C,
        None, _C,
        None, _C,
        Node._candidate_timers, _F | _C | _L,
    ),
    (  # ROLE_LEADER
        Node._leader_leader_beat, _F | _C | _L,
        None, _L,
        Node._leader_other_beat, _C | _L,
        Node._leader_claim, _F | _C | _L,
        Node._on_handoff, _L,
        None, _L,
        Node._answer, _L,
        Node._leader_duties, _F | _L,
        None, _L,
    ),
)
# fmt: on
