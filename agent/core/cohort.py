"""Deferred deliveries for the in-memory mesh: the steady followers of one leader as a cohort.

In a settled mesh of n nodes almost every delivery is a heartbeat that a follower only books:
a follower's report in its own term, or its leader's heartbeat. ``Node.receive`` then does
exactly this and nothing else (``_learn``, ``_on_report`` and ``_on_leader_heartbeat`` in
node.py):

- the sender's peer entry takes the heartbeat's fields, heard now;
- a report raises ``_ev_time`` to when the sender heard the leader (now - heard), the leader's
  heartbeat sets ``_ev_time`` and ``_direct`` to now (a raise too: both are never after now);
- the wakeup is recomputed from those two times, so it can only move later: no event, no
  message, and no earlier timer for the mesh to arrange.

So the mesh does not hand such a heartbeat to each follower. It appends it once to the log of
the cohort, the followers of one leader in one term (and one partition group), whose members
all receive the same heartbeats at the same times. A member catches up (``sync``) before
anything else touches it: its own timer, any other message (which dissolves the cohort), a
scenario step, the end of ``run_until``. Catching up books the log in order: the last entry
per sender wins (one C-level ``dict.update``), the times are a maximum, and the wakeup is the
node's own ``_update_wakeup``. Its state is then what one ``receive`` per heartbeat would have
left; tests/test_core_cohort.py runs meshes both ways and compares every step.

The peer entries are shared: one ``Shared`` entry per heartbeat, put in every member's table.
Only ``receive`` changes an entry in place (the sender's), so the mesh gives that one back to
the node as its own copy first (``own_entry``).

Runs on CPython and MicroPython (the replay tool uses it); never loaded by a board.
"""

from agent.core.messages import F_CANDIDATE, F_LEADER, HEARTBEAT
from agent.core.node import HEARD_NONE, ROLE_FOLLOWER
from agent.core.peers import Peer


class Shared(Peer):
    """A peer entry that several tables hold: never changed in place."""

    __slots__ = ()


def _entry(cls, node_id, fields, heard):
    """A peer entry with the fields a heartbeat books (``fields``: a Msg or a Peer)."""
    p = cls(node_id)
    p.score = fields.score
    p.battery = fields.battery
    p.link = fields.link
    p.flags = fields.flags
    p.term = fields.term
    p.heard = heard
    return p


def shared_entry(msg, now):
    """The entry every member's table takes for heartbeat ``msg``, delivered now."""
    return _entry(Shared, msg.sender, msg, now)


def own_entry(table, node_id):
    """Before ``Node.receive`` may change ``node_id``'s entry in place: make it the node's own."""
    p = table.by_id.get(node_id)
    if p is not None and type(p) is Shared:
        table.by_id[node_id] = _entry(Peer, node_id, p, p.heard)


def steady(node):
    """The leader a node follows steadily, or None: a cohort may defer its heartbeats."""
    if node.role == ROLE_FOLLOWER and not node._suspected_gone:
        return node.leader
    return None


class Cohort:
    """The followers of ``leader`` in ``term`` within partition ``group``, and the heartbeats
    they have been sent but not yet booked. Members are SimNodes (``cohort``, ``cpos``: the
    log position they have booked up to)."""

    def __init__(self, group, leader, term):
        self.group = group
        self.leader = leader
        self.term = term
        self.members = {}  # node id -> SimNode (only iterated for order-free work)
        self.log = []  # (sender, shared entry) per heartbeat, in delivery order
        self.times = []  # and its evidence: when its sender heard the leader
        self.beat_at = -1  # index of the leader's latest heartbeat in the log, and its time
        self.beat_time = 0
        # Since that heartbeat: the latest evidence, a sender of it, and the latest evidence
        # of every other sender (what a member books, whose own reports do not count).
        self.top = 0
        self.top_sender = None
        self.second = 0

    def takes(self, msg):
        """Whether a member's ``receive`` of ``msg`` would only book it (see the module doc)."""
        if msg.kind != HEARTBEAT or msg.term != self.term:
            return False
        if msg.flags & F_LEADER:
            return msg.sender == self.leader
        return msg.heard < HEARD_NONE and not msg.flags & F_CANDIDATE

    def add(self, msg, entry, now):
        """Log ``msg``, delivered now, for every member (``entry``: its shared peer entry)."""
        sender = msg.sender
        if msg.flags & F_LEADER:
            self.beat_at = len(self.log)
            self.beat_time = self.top = self.second = seen = now
            self.top_sender = sender
        else:
            seen = now - msg.heard
            if seen > self.top:
                if sender != self.top_sender:
                    self.second = self.top
                    self.top_sender = sender
                self.top = seen
            elif seen > self.second and sender != self.top_sender:
                self.second = seen
        self.log.append((sender, entry))
        self.times.append(seen)

    def join(self, sim):
        self.members[sim.id] = sim
        sim.cohort = self
        sim.cpos = len(self.log)

    def leave(self, sim):
        del self.members[sim.id]
        sim.cohort = None

    def sync(self, sim, now):
        """Book what the log holds for ``sim`` beyond its position, as receive would have."""
        pos = sim.cpos
        log = self.log
        end = len(log)
        if pos >= end:
            return
        sim.cpos = end
        node = sim.node
        own = node.id
        table = node.peers
        by_id = table.by_id
        size = len(by_id)
        by_id.update(log[pos:] if pos else log)
        by_id.pop(own, None)  # the member's own heartbeats are in the log, for the others
        if len(by_id) != size:
            table.oldest = None  # new entries: the earliest heard is unknown
        # The latest evidence, but not from the member's own reports.
        moved = False
        if self.beat_at >= pos:
            # Nothing logged before the leader's heartbeat is later than it (evidence is
            # never after its delivery): the latest is the heartbeat's or a later report's.
            best = self.second if self.top_sender == own else self.top
            node._direct = self.beat_time
            moved = True
        else:
            best = node._ev_time
            times = self.times
            for i in range(pos, end):
                if times[i] > best and log[i][0] != own:
                    best = times[i]
        if best > node._ev_time:
            node._ev_time = best
            moved = True
        if moved:
            node._update_wakeup(now)

    def trim(self):
        """Drop the log every member has booked (called when it grows long)."""
        low = len(self.log)
        for sim in self.members.values():
            if sim.cpos < low:
                low = sim.cpos
        if low:
            del self.log[:low]
            del self.times[:low]
            self.beat_at -= low
            for sim in self.members.values():
                sim.cpos -= low
