"""The sans-IO data path: readings from members, through the leader, to the gateway, exactly once.

Theory of operation (see docs/design.md, "The data path"):

- A reading is named by (node, boot, seq). ``seq`` grows by one per reading within one boot.
- Member side, :class:`ReadingBuffer`: every reading stays in a bounded ring until a
  READINGS_ACK confirms that the *gateway* stored it. Unconfirmed readings are sent to the
  current leader, sent again after ``resend_ms`` without confirmation, and all sent again to a
  new leader (or in a new term). So a leader crash, a handoff or a lost frame never loses a
  reading; the only loss is a full ring, which drops the oldest and counts it in ``dropped``.
- Leader side, :class:`Collector`: gathers readings (dedup by name while it holds them), and
  makes batches for the gateway with the same batch id on every resend. Only a BATCH_ACK OK
  turns into READINGS_ACK confirmations; a fenced ack or lost leadership discards everything
  held, because the members still hold those readings and resend them to the next leader.
- The gateway stores each (mesh, node, boot, seq) once, so duplicates that the resends create
  (a batch stored but its ack lost, two leaders during a partition) stop there.

How a member's ring overflow reaches the gateway: a READINGS frame has no field for it, so the
buffer adds the reserved metric ``_dropped`` (its running total for this boot) to the first
reading of a send; the collector strips it before batching and reports it in ``dropped``.

How the node application (agent/core/app.py) drives it for both runtimes, on every tick::

    buffer.add(now, {"temp": 21500})                      # whenever a sensor is read
    if node.leader == me:                                 # leading: a member of itself too
        collector.pull_own(buffer, now, node.term)
        while (batch := collector.due_batch(now, node.term, members, new_elections)):
            send(batch_message(me, node.term, batch))     # to the gateway
    else:
        for msg in buffer.due_messages(now, node.leader, node.term):
            send(msg)                                     # to the leader
    # on READINGS:     collector.add(msg)
    # on BATCH_ACK:    for ack in make_ack_messages(me, node.term,
    #                          collector.on_ack_msg(msg, now, own_buffer=buffer)): send(ack)
    # on READINGS_ACK: buffer.on_ack(msg)
    # when this node stops leading: collector.lost_leadership()

Everything here runs on CPython and MicroPython: no clock (``now`` is integer ms, from a
counter that does not wrap), no I/O, no dict-order reliance, integers only, named bounds.
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.messages import (
    ACK_FENCED,
    ACK_OK,
    BATCH,
    BATCH_ACK,
    READINGS,
    READINGS_ACK,
    Msg,
)

# Timings (ms). A member resends later than a healthy round trip takes (the leader waits up to
# _BATCH_MS, then the gateway answers), so it does not resend what the leader still holds.
_BATCH_MS = const(1000)
_BATCH_RESEND_MS = const(2000)
RESEND_MS = 4000
# With nothing to send, a leader still sends a batch this often: it carries the mesh view
# (members, battery, link) that the dashboard shows.
BATCH_IDLE_MS = 10000

# Frame budgets (bytes of the encoded frame, tag included). READINGS/READINGS_ACK stay under one
# Wi-Fi/Ethernet MTU without IP fragmentation; a BATCH must stay under the codec's MAX_FRAME_BYTES.
_READINGS_FRAME_BYTES = const(1200)
BATCH_FRAME_BYTES = const(4096)
# One reading of the most metrics at worst-case sizes with the agg rows it adds to a batch:
# 1 + 17 + 3 * 5 + 9 + 1 + 8 * (17 + 9) = 251, and 8 * (_AGG_ROW_MAX + 16 + 16) = 512; the
# 56 bytes of slack keep it the bound it was with a 9-byte count.
_READING_MAX = const(819)
# The smallest ``Collector(max_frame_bytes=...)``: the overheads below and _READING_MAX (1043)
# with room to spare; elections, dropped totals and members fill what is left, in turns.
_MIN_BATCH_FRAME_BYTES = const(1100)
# Worst-case size of everything in a frame but the body's big item: array header, vk, mesh hash,
# sender (16 bytes), boot, counter, term (9 bytes each), target (16 bytes), 8-byte tag.
_FRAME_OVERHEAD = const(88)
# Worst-case size of the batch map's keys and scalar fields: "id", "mesh", "leader" (16-byte
# strings; mesh 32), the seven key names and the array headers of its lists.
_BATCH_MAP_OVERHEAD = const(136)

# The data path's own bounds on what one reading may carry, tighter than the wire's schema
# (agent/core/wire.py, and the batch map's agent/core/batchcheck.py, which the gateway applies):
# they size the frames (see _READING_MAX), and nothing the data path builds is refused further
# on, where a refused batch would be resent for ever. 16 bytes is the wire's node-id bound too.
_MAX_METRICS = const(8)
_MAX_NAME_BYTES = const(16)
MAX_MESH_BYTES = const(32)
# Values and times fit a JavaScript number exactly (the dashboard), and SQLite's int64.
# (Consts, also these two, which are no small ints on a 32-bit MCU: the compiler puts them in
# the code, and a module global would be one more interned name on a board.)
_MAX_VALUE = const(9007199254740991)  # 2**53 - 1
_MAX_U32 = const(0xFFFFFFFF)  # boot, seq and terms on the wire
_DROPPED_METRIC = const("_dropped")
# A sleepy member's wake interval (ms), on the first reading of a send, as _dropped: its leader
# takes it out (agent/core/app.py) and lists the member with it while it sleeps.
# (A private const, as app.py's copy: a module global's name is interned on MicroPython.)
_SLEEP_METRIC = const("_sleep_ms")

# Bounds on frames and on the leader's state.
MAX_READINGS_PER_FRAME = const(32)
_MAX_RANGES_PER_ACK = const(32)
BATCH_MAX_READINGS = const(64)
MAX_IN_FLIGHT = const(2)
# The mesh view in a batch is bounded so that, at worst case sizes, one reading of the most
# metrics still fits BATCH_FRAME_BYTES (tests check it). Bigger meshes report their members in
# turns, a window that moves on with every batch.
_MAX_ELECTIONS = const(4)
_MAX_MEMBERS = const(24)
_MAX_DROPPED_NODES = const(24)
# An election reason the collector reports: the schema's text allows 32 bytes, but at the
# smallest frame (_MIN_BATCH_FRAME_BYTES) a row with a longer reason would never fit the view.
_MAX_REASON_BYTES = const(16)
_MAX_RANGES_IN = const(64)
# Nodes whose newest seq the collector keeps (the others are looked for in what it holds).
_MAX_NEWEST = const(64)

# The schema's bounds that the two rows of the mesh view need (_member_row, _election_row):
# wire.py's, repeated because an underscored const is no module attribute on MicroPython
# (tests/test_wire.py checks that they agree).
_MAX_TEXT_BYTES = const(32)  # wire._MAX_NAME_BYTES: election reasons
_I32_MIN = const(-0x80000000)
_I32_MAX = const(0x7FFFFFFF)
_U16 = const(0xFFFF)
_U8 = const(0xFF)
_I64_MAX = const(0x7FFFFFFFFFFFFFFF)

_NEVER = const(-1)
# Worst case of an agg row without its two strings: array header, two string headers, the
# count (at most BATCH_MAX_READINGS: 2 bytes) and min, max, mean (9 bytes each).
# (Underscored consts are inlined by MicroPython's compiler, so they sit above every use.)
_AGG_ROW_MAX = const(1 + 2 + 2 + 3 * 9)


def make_messages(sender, leader, term, readings):
    """Split ``readings`` into as few READINGS Msgs as fit the frame budget, in order."""
    out = []
    chunk = []
    size = _FRAME_OVERHEAD
    for reading in readings:
        item = cbor_size(reading)
        if chunk and (size + item > _READINGS_FRAME_BYTES or len(chunk) >= MAX_READINGS_PER_FRAME):
            out.append(Msg(READINGS, sender, term=term, target=leader, body=chunk))
            chunk = []
            size = _FRAME_OVERHEAD
        chunk.append(reading)
        size += item
    if chunk:
        out.append(Msg(READINGS, sender, term=term, target=leader, body=chunk))
    return out


def make_ack_messages(sender, term, confirmations):
    """READINGS_ACK Msgs for the ``(member, ranges)`` pairs that ``Collector.on_batch_ack`` returns."""
    out = []
    for member, ranges in confirmations:
        out.append(Msg(READINGS_ACK, sender, term=term, target=member, body=ranges))
    return out


def batch_message(sender, term, batch):
    """The BATCH Msg carrying ``batch`` (a map from ``Collector.due_batch``)."""
    return Msg(BATCH, sender, term=term, body=batch)


def cbor_size(value):
    """Bytes that CBOR takes for ``value`` (int, str, list/tuple, dict, None, bool).

    The data path sizes frames itself, before the injected codec encodes them, so a frame is
    never built too big and then dropped by a receiver.
    """
    if value is None or value is True or value is False:
        return 1
    if isinstance(value, int):
        return _head_size(-1 - value if value < 0 else value)
    if isinstance(value, str):
        n = len(value.encode())
        return _head_size(n) + n
    if isinstance(value, (list, tuple)):
        size = _head_size(len(value))
        for item in value:
            size += cbor_size(item)
        return size
    if isinstance(value, dict):
        size = _head_size(len(value))
        for key in value:
            size += cbor_size(key) + cbor_size(value[key])
        return size
    raise ValueError("cannot size %r" % (value,))


class ReadingBuffer:
    """A member's readings, held until the gateway confirmed them (bounded ring).

    Preallocated parallel lists of ``capacity`` slots. The ``_used`` slots from ``_start``
    (wrapping) hold readings in growing seq order; a slot's metrics are one flat tuple
    (name, value, ...), about a third of a dict's room (a dict is built only to send); a slot
    whose metrics is None was confirmed out of order (a hole). Holes at either end are trimmed at once; a full ring with holes
    inside is compacted before anything is dropped, so only ``capacity`` unconfirmed readings
    ever make the ring drop its oldest.
    """

    def __init__(self, node, boot, capacity, resend_ms=RESEND_MS):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not _is_name(node):
            raise ValueError("node ids are 1..%d UTF-8 bytes" % _MAX_NAME_BYTES)
        if not _is_int(boot) or not 0 <= boot <= _MAX_U32:
            raise ValueError("boot must be an int in 0..2**32-1")
        self.node = node
        self.boot = boot
        self.capacity = capacity
        self.resend_ms = resend_ms
        self._seq = [0] * capacity
        self._t = [0] * capacity
        self._metrics = [None] * capacity
        self._sent_at = [_NEVER] * capacity
        self._start = 0
        self._used = 0
        self._next_seq = 1  # seqs start at 1 in every boot
        # The leader and term the sent marks refer to: a change makes everything due again.
        self._to_leader = None
        self._to_term = -1
        # Earliest `now` at which `due` can return something (0: now), as long as the leader
        # and term stay the same: a change makes everything due at once.
        self.wakeup = 0
        self.depth = 0  # readings held (not yet confirmed)
        self.dropped = 0  # readings lost to overflow (the only way a reading is lost)
        self.taken = 0
        self.sent = 0
        self.resent = 0
        self.confirmed = 0
        self.ignored_ranges = 0  # ranges of another boot, or nothing held in them
        self.invalid_acks = 0
        # READINGS_ACKs not from the leader and term our readings last went to: ignored.
        self.foreign_acks = 0
        self.sleep_ms = 0  # a sleepy member's wake interval: sent as _SLEEP_METRIC

    def add(self, t_ms, metrics):
        """Store a reading taken at ``t_ms``; return its seq. ValueError on bad input."""
        if type(t_ms) is not int or not 0 <= t_ms <= _MAX_VALUE:
            raise ValueError("bad t_ms: %r" % (t_ms,))
        reason = _metrics_problem(metrics)
        if reason:
            raise ValueError("bad metrics: %s" % reason)
        seq = self._next_seq
        if seq > _MAX_U32:
            raise ValueError("seq exhausted in this boot: restart with a higher boot counter")
        cap = self.capacity
        if self._used == cap:
            if self.depth < cap:
                self._compact()
            else:
                # Full of unconfirmed readings: the oldest makes room, counted.
                self._metrics[self._start] = None
                self.depth -= 1
                self.dropped += 1
                self._trim()
        slot = (self._start + self._used) % cap
        self._seq[slot] = seq
        self._t[slot] = t_ms
        self._metrics[slot] = _pairs(metrics)  # a copy: the caller may reuse its dict
        self._sent_at[slot] = _NEVER
        self._used += 1
        self._next_seq = seq + 1
        self.depth += 1
        self.taken += 1
        self.wakeup = 0
        return seq

    def due(self, now, leader, term, max_count=MAX_READINGS_PER_FRAME):
        """Readings to send to ``leader`` now, oldest first, as wire lists; marks them sent.

        Due: never sent, sent but unconfirmed for ``resend_ms``, and every unconfirmed reading
        when ``(leader, term)`` differs from the last send. Returns [] with no leader.
        """
        if leader is None:
            return []
        cap = self.capacity
        if leader == self._to_leader and term == self._to_term:
            if now < self.wakeup:
                return []  # nothing due yet
        else:
            self._to_leader = leader
            self._to_term = term
            for k in range(self._used):
                self._sent_at[(self._start + k) % cap] = _NEVER
        out = []
        wakeup = _NEVER
        for k in range(self._used):
            slot = (self._start + k) % cap
            metrics = self._metrics[slot]
            if metrics is None:
                continue
            sent_at = self._sent_at[slot]
            if sent_at != _NEVER and now - sent_at < self.resend_ms:
                again = sent_at + self.resend_ms
                if wakeup == _NEVER or again < wakeup:
                    wakeup = again
                continue
            if len(out) >= max_count:
                wakeup = now  # more is due right away
                break
            if sent_at == _NEVER:
                self.sent += 1
            else:
                self.resent += 1
            self._sent_at[slot] = now
            out.append([self.boot, self._seq[slot], self._t[slot], _unpack(metrics, 0)])
            again = now + self.resend_ms
            if wakeup == _NEVER or again < wakeup:
                wakeup = again
        self.wakeup = wakeup if wakeup != _NEVER else now + self.resend_ms
        if out and self.dropped:
            out[0][3][_DROPPED_METRIC] = self.dropped  # (a fresh dict: the held tuple stays)
        if out and self.sleep_ms:
            out[0][3][_SLEEP_METRIC] = self.sleep_ms
        return out

    def due_messages(self, now, leader, term, max_count=MAX_READINGS_PER_FRAME):
        """``due`` packed into READINGS Msgs from this node (the usual member call)."""
        return make_messages(self.node, leader, term, self.due(now, leader, term, max_count))

    def confirm(self, ranges, sent=False):
        """Free the readings in ``ranges`` ([[boot, first, last], ...]); return how many.

        ``sent``: free only readings sent since the last change of leader or term (a
        member's ack may confirm only what went to that leader).
        """
        if not isinstance(ranges, list):
            self.invalid_acks += 1
            return 0
        freed = 0
        cap = self.capacity
        for item in ranges[:_MAX_RANGES_IN]:
            # (Checks used once are inline: every function's name is interned on MicroPython.)
            if not (
                isinstance(item, list)
                and len(item) == 3
                and _is_int(item[0])
                and _is_int(item[1])
                and _is_int(item[2])
                and item[0] >= 0
            ):
                self.invalid_acks += 1
                continue
            boot, first, last = item
            k = self._find(first) if boot == self.boot else self._used
            hit = 0
            # Seqs grow along the slots, so the walk stops at the range's end: a huge range
            # costs at most `capacity` steps.
            while k < self._used:
                slot = (self._start + k) % cap
                if self._seq[slot] > last:
                    break
                if self._metrics[slot] is not None and not (sent and self._sent_at[slot] == _NEVER):
                    self._metrics[slot] = None
                    hit += 1
                k += 1
            if hit:
                freed += hit
            else:
                self.ignored_ranges += 1
        self.depth -= freed
        self.confirmed += freed
        self._trim()
        return freed

    def on_ack(self, msg):
        """Apply a READINGS_ACK Msg meant for this node; return how many readings it freed,
        or -1 if it is not taken.

        Taken only from the leader our readings last went to, in that term, and only for
        readings sent to it: anyone else's ack (another key holder's, a deposed leader's) is
        counted in ``foreign_acks`` and frees nothing. A late ack of an earlier leader is
        lost that way, not its readings: they go to the new leader, and the gateway keeps
        one copy.
        """
        if msg.kind != READINGS_ACK or msg.target != self.node:
            return -1
        if msg.sender != self._to_leader or msg.term != self._to_term:
            self.foreign_acks += 1
            return -1
        return self.confirm(msg.body, True)

    def unconfirmed(self):
        """The seqs still held, oldest first (diagnostics and tests; allocates a list)."""
        out = []
        for k in range(self._used):
            slot = (self._start + k) % self.capacity
            if self._metrics[slot] is not None:
                out.append(self._seq[slot])
        return out

    def _find(self, seq):
        """The first used position k whose seq is >= ``seq`` (binary search)."""
        lo = 0
        hi = self._used
        while lo < hi:
            mid = (lo + hi) // 2
            if self._seq[(self._start + mid) % self.capacity] < seq:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _trim(self):
        # Drop holes at both ends, so the oldest used slot always holds a reading.
        cap = self.capacity
        metrics = self._metrics
        while self._used and metrics[self._start] is None:
            self._start = (self._start + 1) % cap
            self._used -= 1
        while self._used and metrics[(self._start + self._used - 1) % cap] is None:
            self._used -= 1
        if not self._used:
            self._start = 0

    def _compact(self):
        # Slide the held readings over the holes, keeping their order; O(capacity), and only
        # when the ring is full of slots but not of readings.
        cap = self.capacity
        write = 0
        for k in range(self._used):
            src = (self._start + k) % cap
            if self._metrics[src] is None:
                continue
            dst = (self._start + write) % cap
            if dst != src:
                self._seq[dst] = self._seq[src]
                self._t[dst] = self._t[src]
                self._metrics[dst] = self._metrics[src]
                self._sent_at[dst] = self._sent_at[src]
                self._metrics[src] = None
            write += 1
        self._used = write


class Collector:
    """The leader's side: gathers readings, batches them for the gateway, confirms on ack.

    Held readings are either pending (in ``_pending``, arrival order) or in one in-flight batch.
    Each is one flat tuple, an *entry* ``(node, boot, seq, t_ms, name, value, name, value, ...)``
    (about 130 bytes on the 64-bit unix port, against 290 for a wire list with its metrics dict
    and a tuple key): a leader holds ``capacity`` of them, the biggest part of a board's data.
    Wire lists are built from entries only while a batch is sent. Dedup by name has no index
    (a dict of 64 keys is 1 KB that must be found in one piece, and grows by copies): members
    send their seqs in growing order, so ``_newest`` keeps per node the boot and the highest
    seq it sent; a higher seq of that boot is new for sure, anything else (a resend, another
    boot, a node not in the table) is looked for among the held entries, at most ``capacity``.
    """

    def __init__(
        self,
        node,
        mesh,
        capacity,
        batch_ms=_BATCH_MS,
        batch_resend_ms=_BATCH_RESEND_MS,
        batch_idle_ms=BATCH_IDLE_MS,
        max_frame_bytes=BATCH_FRAME_BYTES,
        max_in_flight=MAX_IN_FLIGHT,
        token=None,
    ):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError("max_in_flight must be 1..%d" % MAX_IN_FLIGHT)
        if not _MIN_BATCH_FRAME_BYTES <= max_frame_bytes <= BATCH_FRAME_BYTES:
            raise ValueError("max_frame_bytes")
        if not _is_name(node):
            raise ValueError("node ids are 1..%d UTF-8 bytes" % _MAX_NAME_BYTES)
        if not isinstance(mesh, str) or not 0 < len(mesh.encode()) <= MAX_MESH_BYTES:
            raise ValueError("mesh names are 1..%d UTF-8 bytes" % MAX_MESH_BYTES)
        self.node = node
        self.mesh = mesh
        self.capacity = capacity
        self.batch_ms = batch_ms
        self.batch_resend_ms = batch_resend_ms
        self.batch_idle_ms = batch_idle_ms
        # A board sends batches of one Wi-Fi datagram (about 1400 bytes): no IP fragments, and
        # no 4 KB block to find in a small fragmented heap when the frame is encoded.
        self.max_frame_bytes = max_frame_bytes
        # A board keeps one batch in flight: the second's mesh view and map are about 1.6 KB
        # of a small heap, and on a LAN the ack is back long before the next batch is due.
        self.max_in_flight = max_in_flight
        self._held = 0  # entries held, pending and in flight
        # node -> [boot, seq]: every held entry of that node and boot has a seq <= seq.
        self._newest = {}
        self._pending = []  # entries, arrival order
        # records [batch_id, batch map but readings and agg, sent_at, entries, term]
        self._in_flight = []
        self._elections = []
        self._dropped = {}  # node -> running overflow total its buffer reported
        self._members_from = 0  # where the next window of a too-big mesh view starts
        # The most readings the next batch takes: halved by every batch that ran out of heap
        # (a board's: making one takes several times its frame), doubled back by every one
        # made, so that a full collector still drains in a heap too tight for a full batch.
        self._take = BATCH_MAX_READINGS
        self._last_batch_at = None
        self._last_batch_id = 0  # batches made: 1, 2, ... for this boot of this node
        # A random int from the runtime (the core has no randomness of its own). Then a batch
        # id is the count times 2**24 plus 24 bits that this number seeds, and the gateway's
        # BATCH_ACK must echo it: a key holder that did not see a batch of ours cannot guess
        # it (one in 16 million per try). Without it, ids are 1, 2, ... (the simulator and
        # the replay tool, which must be deterministic).
        self.token = token
        # Set by a fenced ack: the gateway knows a leader of this term, so no batch goes out
        # until this node leads in a newer term.
        self.fenced_term = None
        self.last_ack_at = None  # when the gateway last answered one of our batches
        self.received = 0
        self.duplicates = 0
        self.invalid = 0
        self.overflow = 0  # refused while full: not lost, the member resends
        self.wrong_target = 0
        self.batches_sent = 0
        self.batches_resent = 0
        self.batches_acked = 0
        self.batches_fenced = 0
        self.batches_rejected = 0
        self.stale_acks = 0
        self.discarded = 0  # held readings dropped by lost_leadership (members still hold them)
        self.truncated = 0  # members/elections/dropped entries left out to respect the bounds
        self.invalid_view = 0  # malformed members/elections entries from the caller, left out

    @property
    def held(self):
        """How many readings this collector holds (pending and in flight)."""
        return self._held

    @property
    def in_flight(self):
        """How many batches wait for the gateway's ack (at most ``max_in_flight``)."""
        return len(self._in_flight)

    def add(self, msg_or_readings, from_node=None):
        """Take readings: a READINGS Msg for this node, or wire lists from ``from_node``.

        Returns how many were new. Malformed ones are dropped and counted, never raised.
        """
        if isinstance(msg_or_readings, Msg):
            msg = msg_or_readings
            if msg.kind != READINGS or msg.target != self.node:
                self.wrong_target += 1
                return 0
            from_node = msg.sender
            readings = msg.body
        else:
            readings = msg_or_readings
        if not _is_name(from_node) or not isinstance(readings, list):
            self.invalid += 1
            return 0
        if len(readings) > MAX_READINGS_PER_FRAME:
            self.invalid += len(readings) - MAX_READINGS_PER_FRAME
            readings = readings[:MAX_READINGS_PER_FRAME]
        added = 0
        for reading in readings:
            if not (
                isinstance(reading, list)
                and len(reading) == 4
                and _is_int(reading[0])
                and _is_int(reading[1])
                and _is_int(reading[2])
                and 0 <= reading[0] <= _MAX_U32
                and 0 <= reading[1] <= _MAX_U32
                and 0 <= reading[2] <= _MAX_VALUE
                and isinstance(reading[3], dict)
            ):
                self.invalid += 1
                continue
            boot, seq, t_ms, metrics = reading
            if _DROPPED_METRIC in metrics:
                metrics = self._take_dropped(from_node, metrics)
                if metrics is None:
                    self.invalid += 1
                    continue
            if _metrics_problem(metrics):
                self.invalid += 1
                continue
            if not self._is_new(from_node, boot, seq):
                self.duplicates += 1
                continue
            if self._held >= self.capacity:
                self.overflow += 1
                continue
            entry = _entry(from_node, boot, seq, t_ms, metrics)
            self._pending.append(entry)
            self._held += 1
            self.received += 1
            added += 1
        return added

    def pull_own(self, buffer, now, term):
        """The leader is a member of itself: move its own due readings straight in.

        Confirmations for them come back from ``on_batch_ack(..., own_buffer=buffer)``.
        """
        room = self.capacity - self._held
        if room <= 0:
            return 0
        return self.add(
            buffer.due(now, self.node, term, min(room, MAX_READINGS_PER_FRAME)), self.node
        )

    def due_batch(self, now, term, members=None, elections=None):
        """The next batch map to send to the gateway now, or None.

        Call until it returns None: each call resends one unacknowledged batch whose
        ``batch_resend_ms`` ran out (same id, same content), or makes a new one when
        ``batch_ms`` passed with readings waiting, ``BATCH_MAX_READINGS`` wait, or
        ``batch_idle_ms`` passed (a batch with only the mesh view). ``members``: entries
        [node, score, battery, link, flags, age_ms], or a function of ``now`` that returns them
        (called only when a new batch is made: no garbage on the calls that send nothing); ``elections``: new entries
        [term, leader, reason] to report (held until they go out in a batch). Nothing goes
        out while ``term`` is not above ``fenced_term``.
        """
        if elections:
            for entry in elections:
                if not _election_row(entry, _MAX_REASON_BYTES):
                    self.invalid_view += 1
                    continue
                if len(self._elections) >= _MAX_ELECTIONS:
                    self._elections.pop(0)
                    self.truncated += 1
                self._elections.append(list(entry))
        if self.fenced_term is not None and term <= self.fenced_term:
            return None
        for record in self._in_flight:
            if now - record[2] >= self.batch_resend_ms:
                record[2] = now
                record[4] = term
                self.batches_resent += 1
                break
        else:
            if len(self._in_flight) >= self.max_in_flight:
                return None
            waited = None if self._last_batch_at is None else now - self._last_batch_at
            if self._pending or self._elections:
                if (
                    waited is not None
                    and waited < self.batch_ms
                    and len(self._pending) < BATCH_MAX_READINGS
                ):
                    return None
            elif waited is not None and waited < self.batch_idle_ms:
                return None
            record = None
        try:
            if record is None:
                record = self._make_batch(now, term, members)
                self._take = min(BATCH_MAX_READINGS, 2 * self._take)
            # In flight, a batch is kept without its readings' wire lists and its agg rows
            # (its biggest parts on a board): both are built again from its entries, the
            # same, for every (re)send, and are garbage once the frame is encoded.
            batch = dict(record[1])
            entries = record[3]
            readings = []
            for entry in entries:
                readings.append([entry[0], entry[1], entry[2], entry[3], _unpack(entry, 4)])
            batch["readings"] = readings
            batch["agg"] = _aggregates(entries)
            return batch
        except MemoryError:
            # Out of heap (a board's): the next batch takes half as many readings, and one in
            # flight bigger than that goes back to pending, to go out in smaller ones (its id
            # is given up: the gateway stores a reading once, whatever batch brings it). If
            # even that finds no room, it stays in flight, resent later.
            self._take = self._take // 2 or 1
            if record is not None and len(record[3]) > self._take:
                self._pending = record[3] + self._pending
                self._in_flight.remove(record)
            raise

    def on_batch_ack(self, batch_id, status, now, own_buffer=None, highest_term=0):
        """Handle the gateway's answer to a batch; return [(member, ranges), ...] to confirm.

        OK: the batch's readings are freed and each member gets its ranges (sorted by member;
        the leader's own go straight to ``own_buffer`` when given). FENCED: a leader of a newer
        term exists, everything held is discarded and no batch goes out until this node leads in
        a term above ``highest_term`` and the batch's own (``fenced_term``). REJECTED: the batch is
        dropped and its readings released, so members resend them later (nothing is lost).
        """
        record = None
        for candidate in self._in_flight:
            if candidate[0] == batch_id:
                record = candidate
        if record is None:
            self.stale_acks += 1
            return []
        self.last_ack_at = now
        if status == ACK_FENCED:
            self.batches_fenced += 1
            fenced = record[4]
            if _is_int(highest_term) and highest_term > fenced:
                fenced = highest_term
            if self.fenced_term is None or fenced > self.fenced_term:
                self.fenced_term = fenced
            self.lost_leadership()
            return []
        self._in_flight.remove(record)
        entries = record[3]
        self._held -= len(entries)
        if not self._held:
            self._newest = {}  # nothing held: no bound needed (and no stale nodes kept)
        if status != ACK_OK:
            self.batches_rejected += 1
            return []
        self.batches_acked += 1
        out = []
        for member, ranges in _confirmations(entries):
            if own_buffer is not None and member == self.node:
                own_buffer.confirm(ranges)
            else:
                out.append((member, ranges))
        return out

    def on_ack_msg(self, msg, now, own_buffer=None):
        """``on_batch_ack`` for a BATCH_ACK Msg (body [batch_id, status, highest_term])."""
        body = msg.body
        if (
            msg.kind != BATCH_ACK
            or msg.target != self.node
            or not isinstance(body, list)
            or len(body) != 3
            or not _is_int(body[0])
            or not _is_int(body[1])
        ):
            self.stale_acks += 1
            return []
        return self.on_batch_ack(body[0], body[1], now, own_buffer, body[2])

    def lost_leadership(self):
        """Forget every held reading and unacknowledged batch; the members still hold them."""
        self.discarded += self._held
        self._held = 0
        self._newest = {}
        self._pending = []
        self._in_flight = []
        self._elections = []
        self._last_batch_at = None

    def _make_batch(self, now, term, members):
        # Everything is built first; the collector's state changes only at the end, where
        # nothing is allocated any more. So a MemoryError on the way (a board's full heap)
        # leaves it as it was: the readings stay pending and the next call makes the batch
        # (taken out of pending and never put in flight, they would be held for ever, and a
        # full collector would take nothing more).
        budget = self.max_frame_bytes - _FRAME_OVERHEAD - _BATCH_MAP_OVERHEAD
        # The mesh view takes what one reading at worst-case sizes leaves, so that the first
        # waiting reading always goes; in this order: elections (what does not fit waits for
        # the next batch), dropped totals, members (a window that moves on).
        view = budget - _READING_MAX
        elections_out, elections_rest, view = _fit(self._elections, view)
        dropped_out = []
        for node in sorted(self._dropped):
            dropped_out.append([node, self._dropped[node]])
        # Members: valid rows sorted by node, a window of what fits that moves on each batch;
        # dropped totals get the room left.
        rows = []
        if callable(members):
            members = members(now)
        invalid = 0
        for item in members or ():
            if _member_row(item):
                rows.append(list(item))
            else:
                invalid += 1
        rows.sort()
        start = self._members_from % len(rows) if rows else 0
        members_out, _, view = _fit((rows[start:] + rows[:start])[:_MAX_MEMBERS], view)
        dropped_out, rest, _ = _fit(dropped_out, view)
        truncated = len(rows) - len(members_out) + len(rest)
        budget -= cbor_size(members_out) + cbor_size(dropped_out) + cbor_size(elections_out)
        # Take pending readings in arrival order while they (and the worst case of the agg
        # rows they add) fit; always at least one.
        taken = 0
        seen_pairs = {}
        for entry in self._pending:
            if taken >= self._take:
                break
            size = _entry_size(entry)
            for k in range(4, len(entry), 2):
                name = entry[k]
                pair = (entry[0], name)
                if pair not in seen_pairs:
                    size += _AGG_ROW_MAX + len(entry[0].encode()) + len(name.encode())
                    seen_pairs[pair] = True  # if this entry does not fit, the loop ends anyway
            if taken and size > budget:
                break
            budget -= size
            taken += 1
        entries = self._pending[:taken]
        pending = self._pending[taken:]
        last_id = self._last_batch_id + 1
        batch_id = last_id
        token = self.token
        if token is not None:
            # An LCG step (Numerical Recipes' constants, 24 bits kept): no randomness is
            # needed once the seed is random, only that the low bits do not stay the same.
            token = (token * 1664525 + 1013904223) & 0xFFFFFFFF
            batch_id = (batch_id << 24) | (token >> 8)
        batch = {
            "id": batch_id,
            "mesh": self.mesh,
            "leader": self.node,
            "readings": None,  # built for every (re)send; here to keep the map's key order
            "members": members_out,
            "dropped": dropped_out,
            "elections": elections_out,
        }
        record = [batch_id, batch, now, entries, term]
        # What the frame budget left behind may go at once, without waiting batch_ms.
        last_at = now - self.batch_ms if pending else now
        self._in_flight.append(record)  # (the last allocation)
        self.invalid_view += invalid
        self._elections = elections_rest
        self._members_from = start + len(members_out)  # all fit: the same start again
        self.truncated += truncated
        self._pending = pending
        self._last_batch_id = last_id
        self.token = token
        self._last_batch_at = last_at
        self.batches_sent += 1
        return record

    def _is_new(self, node, boot, seq):
        """Whether the reading (node, boot, seq) is not held (pending or in flight)."""
        newest = self._newest.get(node)
        if newest is not None and newest[0] == boot:
            if seq > newest[1]:
                newest[1] = seq  # (also if it is then refused: a bound, not a record)
                return True
            return self._find(node, boot, seq) >= 0
        top = self._find(node, boot, seq)
        if top < 0:
            return False
        if newest is not None:
            newest[0] = boot  # the node restarted (or an old boot's resend): track this one
            newest[1] = top if top > seq else seq
        elif len(self._newest) < _MAX_NEWEST:
            self._newest[node] = [boot, top if top > seq else seq]
        return True

    def _find(self, node, boot, seq):
        """-1 if (node, boot, seq) is held, else the highest seq held of that node and boot."""
        top = _held_top(self._pending, node, boot, seq)
        for record in self._in_flight:
            if top < 0:
                break
            found = _held_top(record[3], node, boot, seq)
            if found < 0 or found > top:
                top = found
        return top

    def _take_dropped(self, node, metrics):
        """Record a member's reported overflow total; return its metrics without it."""
        total = metrics[_DROPPED_METRIC]
        if not _is_int(total) or not 0 <= total <= _MAX_VALUE:
            return None
        if node in self._dropped or len(self._dropped) < _MAX_DROPPED_NODES:
            # A running total per boot: take the latest report (a reboot may lower it).
            self._dropped[node] = total
        else:
            self.truncated += 1
        rest = {}
        for name in metrics:
            if name != _DROPPED_METRIC:
                rest[name] = metrics[name]
        return rest


def _held_top(entries, node, boot, seq):
    """-1 if ``entries`` hold (node, boot, seq), else their highest seq of node and boot (0)."""
    top = 0
    for entry in entries:
        if entry[1] == boot and entry[0] == node:
            if entry[2] == seq:
                return -1
            if entry[2] > top:
                top = entry[2]
    return top


def _fit(rows, room):
    """(the first rows that fit ``room`` bytes, the rest, the room left); keeps 1 byte spare
    for the list head growing."""
    taken = 0
    for row in rows:
        size = cbor_size(row)
        if size > room - 1:
            break
        room -= size
        taken += 1
    return rows[:taken], rows[taken:], room


def _aggregates(entries):
    """[[node, metric, count, min, max, mean], ...] sorted; mean is floor(sum / count)."""
    acc = {}
    for entry in entries:
        for k in range(4, len(entry), 2):
            name = entry[k]
            value = entry[k + 1]
            key = (entry[0], name)
            row = acc.get(key)
            if row is None:
                acc[key] = [1, value, value, value]
            else:
                row[0] += 1
                if value < row[1]:
                    row[1] = value
                if value > row[2]:
                    row[2] = value
                row[3] += value
    out = []
    for key in sorted(acc):
        count, low, high, total = acc[key]
        out.append([key[0], key[1], count, low, high, total // count])
    return out


def _confirmations(entries):
    """Group entries by member into compact ranges: [(member, [[boot, first, last], ...]), ...]."""
    by_member = {}
    for entry in entries:
        seqs = by_member.get(entry[0])
        if seqs is None:
            seqs = by_member[entry[0]] = []
        seqs.append((entry[1], entry[2]))
    out = []
    for member in sorted(by_member):
        ranges = []
        for boot, seq in sorted(by_member[member]):
            last = ranges[-1] if ranges else None
            if last is not None and last[0] == boot and last[2] + 1 == seq:
                last[2] = seq
            else:
                if len(ranges) >= _MAX_RANGES_PER_ACK:
                    out.append((member, ranges))
                    ranges = []
                ranges.append([boot, seq, seq])
        out.append((member, ranges))
    return out


def _unpack(items, start):
    """The metrics dict of a flat tuple's (name, value) pairs from ``start`` on."""
    metrics = {}
    for k in range(start, len(items), 2):
        metrics[items[k]] = items[k + 1]
    return metrics


def _pairs(metrics):
    """The flat tuple (name, value, ...) of a metrics dict."""
    items = [None] * (2 * len(metrics))
    _put(items, 0, metrics)
    return tuple(items)


def _entry(node, boot, seq, t_ms, metrics):
    """A held reading: (node, boot, seq, t_ms, name, value, ...)."""
    items = [None] * (4 + 2 * len(metrics))
    items[0] = node
    items[1] = boot
    items[2] = seq
    items[3] = t_ms
    _put(items, 4, metrics)
    return tuple(items)


def _put(items, k, metrics):
    # Pairs in the dict's own order: only the wire map's key order follows from it, and that
    # was the dict's order before. One list of the final size, and no other garbage: between
    # long-lived tuples, garbage of every size would leave holes too small for the next.
    for name in metrics:
        items[k] = name
        items[k + 1] = metrics[name]
        k += 2


def _entry_size(entry):
    """CBOR size of an entry's wire list [node, boot, seq, t_ms, {metrics}]."""
    size = 1 + _head_size((len(entry) - 4) // 2)
    for item in entry:
        size += cbor_size(item)
    return size


def _head_size(n):
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


def _is_int(value):
    # bool is an int subclass on both runtimes; a true/false is not a number here.
    return type(value) is int


def _is_name(value):
    return isinstance(value, str) and 0 < len(value.encode()) <= _MAX_NAME_BYTES


# The batch schema's rows of the mesh view: agent/core/batchcheck.py checks a received batch's
# "members" and "elections" with these, and the collector keeps out of its batches what they
# refuse (they are here, not there, because every leader needs them and batchcheck.py is
# loaded only where batches are read). A tuple is taken too: a runtime's rows may be tuples.


def _member_row(item):
    # [node, score, battery, link, flags, age_ms(, sleep_ms)]: i32, u16, u16, u8, unsigned
    # int64, and for a sleepy member its wake interval, u32.
    if type(item) not in (list, tuple) or not 6 <= len(item) <= 7 or not _is_name(item[0]):
        return False
    for value in item[1:]:
        if not _is_int(value):
            return False
    return (
        _I32_MIN <= item[1] <= _I32_MAX
        and 0 <= item[2] <= _U16
        and 0 <= item[3] <= _U16
        and 0 <= item[4] <= _U8
        and 0 <= item[5] <= _I64_MAX
        and (len(item) == 6 or 0 <= item[6] <= _MAX_U32)
    )


def _election_row(item, hi=_MAX_TEXT_BYTES):
    # [term u32, leader id or None, reason: text of 1..hi (32) bytes or a u32 code]
    if type(item) not in (list, tuple) or len(item) != 3:
        return False
    term, leader, reason = item
    if not (_is_int(term) and 0 <= term <= _MAX_U32) or not (leader is None or _is_name(leader)):
        return False
    if _is_int(reason):
        return 0 <= reason <= _MAX_U32
    return isinstance(reason, str) and 0 < len(reason.encode()) <= hi


def _metrics_problem(metrics):
    """Why ``metrics`` is invalid, as a short string; "" when it is valid."""
    if not isinstance(metrics, dict):
        return "not a dict"
    if not 0 < len(metrics) <= _MAX_METRICS:
        return "needs 1..%d metrics" % _MAX_METRICS
    for name in metrics:
        if not _is_name(name):
            return "metric names are 1..%d UTF-8 bytes" % _MAX_NAME_BYTES
        if name[0] == "_":
            return "names starting with _ are reserved"
        value = metrics[name]
        if not _is_int(value) or not -_MAX_VALUE <= value <= _MAX_VALUE:
            return "values are ints within +-(2**53 - 1)"
    return ""
