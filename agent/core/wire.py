"""The wire format: one CBOR array per frame, then an HMAC tag when the mesh has a key.

    frame = cbor([vk, mesh_hash, sender, boot, counter, *body_fields]) + tag

See docs/design.md ("Wire format") for the layout and docs/wire.md for the field ranges and
the order of the checks. Runs on CPython and MicroPython: the caller passes the CBOR
functions in (``agent/strict_cbor.py`` on CPython, ``firmware/lib/cbor.py`` on MicroPython),
nothing here does I/O or reads a clock (``now`` is passed in, in ms).

Theory of operation for ``Codec.decode`` (cheapest and least trusting first):

1. size: a frame over ``MAX_FRAME_BYTES`` is dropped unread;
2. header peek: the first bytes must be an array head, ``vk`` and ``mesh_hash`` (small
   unsigned ints); read by hand, so the frames of a neighbouring mesh are counted
   ``other_mesh`` before anything else, and no full CBOR decode runs before the tag is
   checked;
3. mesh, version, kind and field count; a codec given no ``check_batch`` drops a BATCH
   frame here, unread (``no_batches``);
4. tag (with a key): HMAC-SHA256 over the CBOR bytes, first 8 bytes, constant-time compare;
5. full CBOR decode, then every field's type and range for the kind: a frame never yields a
   ``Msg`` with a wrong-typed field;
6. replay window for (sender, boot, counter); only a frame that passed everything moves it.

Every drop raises ``WireError(reason)`` and counts ``codec.drops[reason]``. Nothing else
escapes ``decode``.
"""

import hashlib

from agent.core import auth
from agent.core.messages import (
    ACK_REJECTED,
    BATCH,
    BATCH_ACK,
    CLAIM,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    PROBE,
    READINGS,
    READINGS_ACK,
    Msg,
)

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const


# An underscored ``const`` costs no heap on MicroPython (the compiler folds it away); public
# names stay module globals. So only what other modules read is public here.

VERSION = const(1)
MAX_FRAME_BYTES = const(4096)  # whole frame, tag included; larger frames are dropped unread
_TAG_BYTES = const(8)  # auth.TAG_BYTES: the first 8 bytes of the HMAC

# Replay protection. 32 frames of reordering is more than a mesh of one radio hop shows.
# The window is two 16-bit halves (bit i: counter high - i seen; i < 16 in the low half):
# every value, shifted or not, stays a small int on a 32-bit board (they end at 2**30), so a
# frame allocates no long int.
_REPLAY_WINDOW = const(32)
_HALF = const(16)
_HALF_MASK = const(0xFFFF)
# A sender silent this long is forgotten: a node that lost its boot counter (flash wiped)
# is accepted again after this quiet time instead of never. Long against the heartbeat
# interval (250 ms default), so a healthy sender is never forgotten.
REPLAY_FORGET_MS = const(60000)
# Default bound of the replay table; a mesh larger than this evicts the least recently
# heard sender (whose old frames then pass the window once more, until it is heard again).
_MAX_SENDERS = const(64)

# Drop reasons: the only values ``WireError.reason`` takes.
TOO_BIG = "too_big"  # over MAX_FRAME_BYTES
MALFORMED = "malformed"  # not CBOR, wrong shape, truncated, trailing bytes
BAD_VERSION = "version"  # another wire VERSION
OTHER_MESH = "other_mesh"  # mesh_hash of another mesh
BAD_TAG = "bad_tag"  # missing or wrong HMAC tag
BAD_FIELD = "bad_field"  # unknown kind, or a field of the wrong type or out of range
REPLAYED = "replayed"  # older boot, or a counter already seen or below the window
NO_BATCHES = "no_batches"  # a BATCH frame reached a codec given no check_batch
REASONS = (TOO_BIG, MALFORMED, BAD_VERSION, OTHER_MESH, BAD_TAG, BAD_FIELD, REPLAYED, NO_BATCHES)

# Field ranges. The 32-bit bounds on boot, counter, term and score keep the worst-case
# heartbeat (16-byte id, every field at its maximum) at 53 CBOR bytes + 8 tag <= 64.
# agent/core/batchcheck.py repeats the ones it needs (a test checks that they agree).
_MAX_ID_BYTES = const(16)  # node ids (sender, target, node names in bodies): 1..16 UTF-8 bytes
_MAX_NAME_BYTES = const(32)  # metric names, batch ids given as text
_MAX_ITEMS = const(256)  # readings, ranges and every list inside a batch
_MAX_METRICS = const(16)  # metrics in one reading
_U8 = const(0xFF)
_U16 = const(0xFFFF)
_U32 = const(0xFFFFFFFF)
_U64 = const(0xFFFFFFFFFFFFFFFF)
_I32_MIN = const(-0x80000000)
_I32_MAX = const(0x7FFFFFFF)
_I64_MIN = const(-0x8000000000000000)
_I64_MAX = const(0x7FFFFFFFFFFFFFFF)

# Number of body fields after [vk, mesh_hash, sender, boot, counter], per kind.
_BODY_FIELDS = {
    HEARTBEAT: 6,
    CLAIM: 2,
    HANDOFF: 3,
    LEAVE: 1,
    PROBE: 2,
    READINGS: 3,
    READINGS_ACK: 3,
    BATCH: 2,
    BATCH_ACK: 3,
}
_HEADER_FIELDS = const(5)


def next_boot(stored, unix_s):
    """This start's boot id: above ``stored`` (the last one persisted; 0 if none was) and,
    when the wall clock is valid, at least the seconds since 2024-01-01 UTC.

    ``unix_s``: the wall clock in Unix seconds, or None if unknown. A clock before 2026-01-01
    was never set (a board without NTP starts at 2000) and is ignored. So a node that lost its
    state (a flashed board, a new SD card) still starts above every boot it had before, as
    long as one of the two holds: peers accept its frames at once and still refuse its old
    ones, and the gateway gets (boot, seq) ids that were never used. Without state and
    without a valid clock it falls back to 1 (the runtime says so; the gateway notices the
    reuse). 32 bits of seconds last until 2160; the literals are no consts because they are
    no small ints on a 32-bit board.
    """
    boot = stored + 1
    if unix_s is not None and unix_s >= 1767225600:  # 2026-01-01
        clock = int(unix_s) - 1704067200  # seconds since 2024-01-01
        if clock > boot:
            boot = clock
    return boot if boot <= _U32 else _U32


class WireError(ValueError):
    """A frame was dropped; ``reason`` is one of ``REASONS``.

    ``decode`` raises it for a peer's bad frame (and counts it). ``encode`` raises it for a
    local message that no receiver would accept (``bad_field`` or ``too_big``, not counted).
    """

    def __init__(self, reason, detail=""):
        super().__init__(reason if not detail else "%s: %s" % (reason, detail))
        self.reason = reason


def mesh_hash(name):
    """The 16-bit mesh hash: the first two bytes of SHA-256 of the name, big-endian."""
    d = hashlib.sha256(name.encode() if isinstance(name, str) else name).digest()
    return (d[0] << 8) | d[1]


class Codec:
    """Encodes and decodes the frames of one mesh, for one local sender.

    ``key``: the mesh key (bytes or str), or None for unauthenticated frames.
    ``dumps``/``loads``: the CBOR functions, always given by the caller, so this module
    imports nothing of either runtime: ``agent.strict_cbor`` on CPython, ``cbor`` from
    firmware/lib on MicroPython. ``boot``: this node's persisted boot counter, grown at
    every boot. ``max_senders``: bound of the replay table.
    ``check_batch``: the batch schema's check (``agent.core.batchcheck.check_batch``), given
    by a codec's user that reads batches (the gateway) or has its own checked before they go
    out (a Pi agent). Without it a received BATCH frame is dropped unread (``no_batches``)
    and an encoded one goes out with its body unchecked: for nodes that only send batches
    they built within the bounds (the firmware's ``datapath.Collector``) and never read one,
    and so never load batchcheck.py (it is not imported here).
    """

    def __init__(
        self,
        mesh,
        key,
        dumps,
        loads,
        boot=0,
        max_senders=_MAX_SENDERS,
        check_batch=None,
    ):
        if isinstance(key, (bytes, bytearray, str)) and len(key) == 0:
            raise ValueError("empty mesh key: pass None for unauthenticated frames")
        if type(boot) is not int or not 0 <= boot <= _U32:
            raise ValueError("boot must be an int in 0..2**32-1")
        if max_senders < 1:
            raise ValueError("max_senders must be at least 1")
        self.mesh = mesh
        self.mesh_hash = mesh_hash(mesh)
        if key is not None and not isinstance(key, auth.Key):
            key = auth.Key(key)
        self._key = key
        self._dumps = dumps
        self._loads = loads
        self.boot = boot
        self.counter = 0  # of the last frame encoded; the first frame carries 1
        self.max_senders = max_senders
        self.check_batch = check_batch
        # sender -> [boot, highest counter, window bits (bit i: highest - i seen), heard ms]
        self._senders = {}
        self.drops = {}
        for reason in REASONS:
            self.drops[reason] = 0
        self.accepted = 0
        self.evicted = 0  # replay-table entries pushed out by new senders

    # -- encoding ----------------------------------------------------------------------

    def encode(self, msg):
        """The frame for ``msg``; fills ``msg.boot`` and ``msg.counter`` (next counter)."""
        counter = self.counter + 1
        if counter > _U32:
            # 2**32 frames in one boot: the node must restart with a higher boot counter.
            raise WireError(BAD_FIELD, "counter exhausted for this boot")
        kind = msg.kind
        if kind not in _BODY_FIELDS:
            raise WireError(BAD_FIELD, "unknown kind %r" % (kind,))
        arr = [
            VERSION * 16 + kind,
            self.mesh_hash,
            msg.sender,
            self.boot,
            counter,
            msg.term,
        ]
        if kind == HEARTBEAT:
            # "heard" saturates (docs/design.md); cap here so no caller can overflow it.
            heard = msg.heard if type(msg.heard) is not int or msg.heard <= _U16 else _U16
            arr.extend((msg.flags, msg.score, heard, msg.battery, msg.link))
        elif kind == CLAIM:
            arr.append(msg.score)
        elif kind == HANDOFF:
            arr.append(msg.target)
            arr.append(msg.flags)
        elif kind == PROBE:
            arr.append(msg.target)
        elif kind == BATCH:
            arr.append(msg.body)
        elif kind != LEAVE:  # READINGS, READINGS_ACK, BATCH_ACK
            arr.append(msg.target)
            arr.append(msg.body)
        # Check with the receiver's rules, so every frame we send is one peers accept.
        why = _check_fields(kind, arr, self.check_batch)
        if why:
            raise WireError(BAD_FIELD, why)
        data = self._dumps(arr)
        if type(data) is memoryview:
            # An encoder that reuses its buffer (the firmware's): one exact-size copy, the tag
            # written in place, no ``data + tag``.
            n = len(data)
            frame = bytearray(n + (_TAG_BYTES if self._key is not None else 0))
            frame[:n] = data
            if self._key is not None:
                frame[n:] = self._key.tag(data, _TAG_BYTES)
            data = frame
        elif self._key is not None:
            data = data + self._key.tag(data, _TAG_BYTES)
        if len(data) > MAX_FRAME_BYTES:
            raise WireError(TOO_BIG, "%d bytes" % len(data))
        self.counter = counter
        msg.boot = self.boot
        msg.counter = counter
        return data

    # -- decoding ----------------------------------------------------------------------

    def decode(self, data, now):
        """The ``Msg`` in frame ``data``; raises ``WireError`` (counted) for a dropped frame."""
        try:
            return self._decode(data, now)
        except WireError as e:
            self.drops[e.reason] += 1
            raise

    def _decode(self, data, now):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireError(MALFORMED, "not bytes")
        size = len(data)
        if size > MAX_FRAME_BYTES:
            raise WireError(TOO_BIG)
        if self._key is not None:
            size -= _TAG_BYTES
        # Header peek: array head, vk, mesh_hash.
        if size < 3:
            raise WireError(MALFORMED, "short")
        head = data[0]
        count = head - 0x80
        if not _HEADER_FIELDS < count < 24:
            raise WireError(MALFORMED, "not a frame array")
        vk, pos = _peek_uint(data, 1, size)
        mesh, pos = _peek_uint(data, pos, size)
        if vk < 0 or mesh < 0:
            raise WireError(MALFORMED, "header")
        if mesh != self.mesh_hash:
            raise WireError(OTHER_MESH)
        if vk >> 4 != VERSION:
            raise WireError(BAD_VERSION)
        kind = vk & 15
        fields = _BODY_FIELDS.get(kind, -1)
        if fields < 0:
            raise WireError(BAD_FIELD, "unknown kind %d" % kind)
        if count != _HEADER_FIELDS + fields:
            raise WireError(MALFORMED, "field count")
        if kind == BATCH and self.check_batch is None:
            # Not read at all: no tag check, no CBOR decode of up to 4 KB.
            raise WireError(NO_BATCHES)
        if self._key is not None:
            body = data[:size]
            if not self._key.verify(body, data[size:]):
                raise WireError(BAD_TAG)
        else:
            body = data
        try:
            arr = self._loads(body)
        except Exception:  # the injected decoder's errors vary; all mean "not our CBOR"
            raise WireError(MALFORMED, "CBOR") from None
        if type(arr) is not list or len(arr) != count or arr[0] != vk or arr[1] != mesh:
            # The peek and the decoder disagree: only a broken injected decoder gets here.
            raise WireError(MALFORMED, "frame array")
        why = _check_fields(kind, arr, self.check_batch)
        if why:
            raise WireError(BAD_FIELD, why)
        sender = arr[2]
        boot = arr[3]
        counter = arr[4]
        if not self._fresh(sender, boot, counter, now):
            raise WireError(REPLAYED)
        self.accepted += 1
        msg = Msg(kind, sender, term=arr[5], boot=boot, counter=counter)
        if kind == HEARTBEAT:
            msg.flags = arr[6]
            msg.score = arr[7]
            msg.heard = arr[8]
            msg.battery = arr[9]
            msg.link = arr[10]
        elif kind == CLAIM:
            msg.score = arr[6]
        elif kind == HANDOFF:
            msg.target = arr[6]
            msg.flags = arr[7]
        elif kind == PROBE:
            msg.target = arr[6]
        elif kind == BATCH:
            msg.body = arr[6]
        elif kind != LEAVE:
            msg.target = arr[6]
            msg.body = arr[7]
        return msg

    # -- replay window -----------------------------------------------------------------

    def _fresh(self, sender, boot, counter, now):
        # True (and the window moved) if (boot, counter) was not seen from this sender.
        # entry: [boot, highest counter, window's low half, heard ms, window's high half]
        entry = self._senders.get(sender)
        if entry is not None and now - entry[3] >= REPLAY_FORGET_MS:
            entry[0] = -1  # forgotten: any boot is new again
        if entry is None:
            if len(self._senders) >= self.max_senders:
                self._evict()
            self._senders[sender] = [boot, counter, 1, now, 0]
            return True
        if boot < entry[0]:
            return False
        if boot > entry[0]:
            entry[0] = boot
            entry[1] = counter
            entry[2] = 1
            entry[4] = 0
        else:
            high = entry[1]
            if counter > high:
                shift = counter - high
                low = entry[2]
                if shift < _HALF:
                    # Masked before the shift: nothing goes above 16 bits.
                    entry[4] = ((entry[4] & (_HALF_MASK >> shift)) << shift) | (
                        low >> (_HALF - shift)
                    )
                    entry[2] = ((low & (_HALF_MASK >> shift)) << shift) | 1
                else:
                    shift -= _HALF  # the low half moves into the high one, or out
                    entry[4] = (low & (_HALF_MASK >> shift)) << shift if shift < _HALF else 0
                    entry[2] = 1
                entry[1] = counter
            else:
                back = high - counter
                if back >= _REPLAY_WINDOW:
                    return False
                half = 2 if back < _HALF else 4
                bit = 1 << (back if back < _HALF else back - _HALF)
                if entry[half] & bit:
                    return False
                entry[half] |= bit
        entry[3] = now
        return True

    def _evict(self):
        # Least recently heard goes; ties by id so every runtime evicts the same sender.
        victim = None
        oldest = 0
        for sender in self._senders:
            heard = self._senders[sender][3]
            if victim is None or heard < oldest or (heard == oldest and sender < victim):
                victim = sender
                oldest = heard
        del self._senders[victim]
        self.evicted += 1

    def forget(self, sender):
        """Drop ``sender``'s replay state (e.g. an operator reset a node's boot counter)."""
        self._senders.pop(sender, None)


# -- helpers ---------------------------------------------------------------------------


def _peek_uint(data, pos, end):
    # (value, next position) of the unsigned int at ``pos``, or (-1, pos) if there is none.
    if pos >= end:
        return -1, pos
    b0 = data[pos]
    if b0 < 24:
        return b0, pos + 1
    if b0 > 27:  # not a major-type-0 head
        return -1, pos
    n = 1 << (b0 - 24)
    if pos + 1 + n > end:
        return -1, pos
    v = 0
    for i in range(pos + 1, pos + 1 + n):
        v = (v << 8) | data[i]
    return v, pos + 1 + n


def _uint(v, hi):
    return type(v) is int and 0 <= v <= hi


def _int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def _text(v, hi):
    # 1..hi UTF-8 bytes. The char count is a cheap lower bound before encoding.
    return type(v) is str and 0 < len(v) <= hi and len(v.encode()) <= hi


def _list(v, n=-1):
    # A list of exactly n items, or of at most _MAX_ITEMS when n is -1.
    return type(v) is list and (len(v) == n if n >= 0 else len(v) <= _MAX_ITEMS)


def _metrics(v):
    # {metric name: int64}, at most _MAX_METRICS of them.
    if type(v) is not dict or len(v) > _MAX_METRICS:
        return False
    for name, value in v.items():
        if not (_text(name, _MAX_NAME_BYTES) and _int(value, _I64_MIN, _I64_MAX)):
            return False
    return True


def _check_fields(kind, arr, check_batch):
    # None if the fields after vk and mesh_hash suit ``kind``, else the name of the first bad
    # one. ``check_batch``: the Codec's (None: a BATCH body goes unchecked).
    if not _text(arr[2], _MAX_ID_BYTES):
        return "sender"
    if not _uint(arr[3], _U32):
        return "boot"
    if not _uint(arr[4], _U32):
        return "counter"
    if not _uint(arr[5], _U32):
        return "term"
    if kind == HEARTBEAT:
        if not _uint(arr[6], _U8):
            return "flags"
        if not _int(arr[7], _I32_MIN, _I32_MAX):
            return "score"
        if not _uint(arr[8], _U16):
            return "heard"
        if not _uint(arr[9], _U16):
            return "battery"
        if not _uint(arr[10], _U16):
            return "link"
    elif kind == CLAIM:
        if not _int(arr[6], _I32_MIN, _I32_MAX):
            return "score"
    elif kind in (HANDOFF, PROBE):
        if not _text(arr[6], _MAX_ID_BYTES):
            return "target"
        if kind == HANDOFF and not _uint(arr[7], _U8):
            return "flags"
    elif kind == BATCH:
        if check_batch is not None:
            why = check_batch(arr[6])
            return why and "%s.%s" % ("batch", why)  # "batch.readings" (no new interned name)
    elif kind != LEAVE:  # READINGS, READINGS_ACK, BATCH_ACK: a target, then a list
        if not _text(arr[6], _MAX_ID_BYTES):
            return "target"
        body = arr[7]
        if kind == READINGS:
            # [[boot, seq, t_ms, {metric: int}], ...]
            if not _list(body):
                return "readings"
            for r in body:
                if not (
                    _list(r, 4)
                    and _uint(r[0], _U32)
                    and _uint(r[1], _U32)
                    and _uint(r[2], _U64)
                    and _metrics(r[3])
                ):
                    return "readings"
        elif kind == READINGS_ACK:
            # [[boot, first_seq, last_seq], ...] with first_seq <= last_seq
            if not _list(body):
                return "ranges"
            for r in body:
                if not (
                    _list(r, 3)
                    and _uint(r[0], _U32)
                    and _uint(r[1], _U32)
                    and _uint(r[2], _U32)
                    and r[1] <= r[2]
                ):
                    return "ranges"
        elif not (
            # BATCH_ACK: [batch id (uint64 or 1..32 bytes of text), status, highest term];
            # the statuses are ACK_OK, ACK_FENCED and ACK_REJECTED: 0..2.
            _list(body, 3)
            and (_uint(body[0], _U64) or _text(body[0], _MAX_NAME_BYTES))
            and _uint(body[1], ACK_REJECTED)
            and _uint(body[2], _U32)
        ):
            return "batch_ack"
    return None
