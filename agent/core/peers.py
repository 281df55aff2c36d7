"""Membership: the bounded table of peers a node has heard, with their scores and last-heard times.

The table is a dict keyed by node id. Nothing here depends on its iteration order: every scan
computes an order-independent result (a count, or a best with a total tie-break by id).
"""

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.messages import F_CANDIDATE, F_LEADER
from agent.core.score import INELIGIBLE, better

# Enough for a building-sized mesh on an ESP32 (each entry is a small object); the Pi agent and
# the simulator raise it. When full, the peer heard least recently is evicted first.
DEFAULT_MAX_PEERS = const(64)


class Peer:
    """One entry of the table. Plain attributes, no properties (each would cost a function
    object on the board): a peer is eligible when ``score >= 0``, and its role and power are
    bits of ``flags`` (``messages.F_*``)."""

    __slots__ = ("battery", "evidence", "flags", "heard", "id", "link", "score", "term")

    def __init__(self, node_id):
        self.id = node_id
        self.score = INELIGIBLE
        self.battery = 0
        self.link = 0
        self.flags = 0
        self.term = 0
        self.heard = 0  # local ms when we last heard anything from it
        self.evidence = -1  # local ms when, by its report, it last heard its leader directly


class PeerTable:
    def __init__(self, max_peers=DEFAULT_MAX_PEERS):
        if max_peers < 1:
            raise ValueError("max_peers must be >= 1")
        self.max_peers = max_peers
        self.by_id = {}
        self.evicted = 0

    def __len__(self):
        return len(self.by_id)

    def __contains__(self, node_id):
        return node_id in self.by_id

    def touch(self, node_id, now):
        """The entry for node_id, created (evicting the stalest if full), marked heard now."""
        peer = self.by_id.get(node_id)
        if peer is None:
            if len(self.by_id) >= self.max_peers:
                # Full: evict the peer heard least recently (the largest id among equals).
                victim = None
                for p in self.by_id.values():
                    if (
                        victim is None
                        or p.heard < victim.heard
                        or (p.heard == victim.heard and p.id > victim.id)
                    ):
                        victim = p
                del self.by_id[victim.id]
                self.evicted += 1
            peer = Peer(node_id)
            self.by_id[node_id] = peer
        peer.heard = now
        return peer

    def forget_older_than(self, cutoff):
        """Drop peers not heard since ``cutoff`` (ms)."""
        # Plain loops rather than comprehensions here: on MicroPython each comprehension is one
        # more function object to load.
        stale = []
        for p in self.by_id.values():
            if p.heard < cutoff:
                stale.append(p.id)
        for node_id in stale:
            del self.by_id[node_id]
        return len(stale)

    def best(self, since, exclude=None):
        """The best eligible peer heard since ``since``, excluding ``exclude``; or None."""
        best = None
        for p in self.by_id.values():
            if p.heard < since or p.score < 0 or p.id == exclude:
                continue
            if best is None or better(p.score, p.id, best.score, best.id):
                best = p
        return best

    def count_better(self, score, node_id, since, exclude=None):
        """How many eligible peers heard since ``since`` rank above (score, node_id)."""
        n = 0
        for p in self.by_id.values():
            if p.heard < since or p.score < 0 or p.id == exclude:
                continue
            if better(p.score, p.id, score, node_id):
                n += 1
        return n

    def count_live(self, since):
        n = 0
        for p in self.by_id.values():
            if p.heard >= since:
                n += 1
        return n

    def count_following(self, term, since):
        """How many peers heard since ``since`` report following the leader of ``term``."""
        n = 0
        for p in self.by_id.values():
            if p.heard >= since and p.term == term and not p.flags & (F_LEADER | F_CANDIDATE):
                n += 1
        return n

    def live_ids(self, since):
        ids = []
        for p in self.by_id.values():
            if p.heard >= since:
                ids.append(p.id)
        ids.sort()
        return ids
