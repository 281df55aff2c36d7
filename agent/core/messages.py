"""The messages the core exchanges, as one small value class (see docs/design.md)."""

# Kinds. Election messages are broadcast to the whole mesh, but for a PROBE (a follower asks
# its leader, which answers with a heartbeat to the prober alone); data-path messages name a
# target. The election's kinds are HEARTBEAT..PROBE: app.py tells them apart by range.
HEARTBEAT = 1
CLAIM = 2
HANDOFF = 3
LEAVE = 4
PROBE = 5
READINGS = 8
READINGS_ACK = 9
BATCH = 10
BATCH_ACK = 11

# Heartbeat (and handoff) flags.
F_LEADER = 1
F_CANDIDATE = 2
F_MAINS = 4
F_LOW_BATTERY = 8
F_LEAVING = 16
F_SLEEPY = 32  # a sleepy member (agent/core/sleepy.py): never leads, mostly asleep

# BATCH_ACK statuses.
ACK_OK = 0
ACK_FENCED = 1
ACK_REJECTED = 2


class Msg:
    """One message. Unused fields stay 0 / None. Treat as immutable once sent.

    ``boot`` and ``counter`` are filled in by the sender's wire codec (replay protection);
    the in-memory simulator leaves them 0.
    """

    __slots__ = (
        "battery",
        "body",
        "boot",
        "counter",
        "flags",
        "heard",
        "kind",
        "link",
        "score",
        "sender",
        "target",
        "term",
    )

    def __init__(
        self,
        kind,
        sender,
        term=0,
        flags=0,
        score=0,
        heard=0,
        battery=0,
        link=0,
        target=None,
        body=None,
        boot=0,
        counter=0,
    ):
        self.kind = kind
        self.sender = sender
        self.boot = boot
        self.counter = counter
        self.term = term
        self.flags = flags
        self.score = score
        self.heard = heard
        self.battery = battery
        self.link = link
        self.target = target
        self.body = body

    def __repr__(self):
        # The kind as its number (see the table above): a table of names would cost every
        # node heap for debugging output only.
        return "Msg(kind %d from %s term=%d flags=%d score=%d heard=%d target=%r)" % (
            self.kind,
            self.sender,
            self.term,
            self.flags,
            self.score,
            self.heard,
            self.target,
        )

    def __eq__(self, other):
        if not isinstance(other, Msg):
            return False
        # A loop, not all(<generator>): a generator expression is one more function object
        # in the heap of every node.
        for name in Msg.__slots__:  # noqa: SIM110
            if getattr(self, name) != getattr(other, name):
                return False
        return True
