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

    __slots__ = ("battery", "flags", "heard", "id", "link", "score", "term")

    def __init__(self, node_id):
        self.id = node_id
        self.score = INELIGIBLE
        self.battery = 0
        self.link = 0
        self.flags = 0
        self.term = 0
        self.heard = 0  # local ms when we last heard anything from it


class PeerTable:
    def __init__(self, max_peers=DEFAULT_MAX_PEERS):
        if max_peers < 1:
            raise ValueError("max_peers must be >= 1")
        self.max_peers = max_peers
        self.by_id = {}
        self.evicted = 0
        # At most the earliest ``heard`` in the table, or None (unknown): a node forgets at
        # every heartbeat, and this spares the scan of a table where nobody is that old.
        self.oldest = None

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
            self.oldest = None
        peer.heard = now
        return peer

    def forget_older_than(self, cutoff):
        """Drop peers not heard since ``cutoff`` (ms)."""
        oldest = self.oldest
        if oldest is not None and cutoff <= oldest:
            return 0
        # Plain loops rather than comprehensions here: on MicroPython each comprehension is one
        # more function object to load.
        stale = []
        oldest = None
        for p in self.by_id.values():
            heard = p.heard
            if heard < cutoff:
                stale.append(p.id)
            elif oldest is None or heard < oldest:
                oldest = heard
        for node_id in stale:
            del self.by_id[node_id]
        self.oldest = oldest
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
