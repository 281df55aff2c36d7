"""The wire format: one CBOR array per frame, then an HMAC tag when the mesh has a key.

    frame = cbor([vk, mesh_hash, sender, boot, counter, *body_fields]) + tag

See docs/design.md ("Wire format") for the layout and docs/wire.md for the field ranges and
the order of the checks. Runs on CPython and MicroPython: the CBOR functions are injected
(cbor2 by default on CPython, ``firmware/lib/cbor.py`` on MicroPython), nothing here does
I/O or reads a clock (``now`` is passed in, in ms).

Theory of operation for ``Codec.decode`` (cheapest and least trusting first):

1. size: a frame over ``MAX_FRAME_BYTES`` is dropped unread;
2. header peek: the first bytes must be an array head, ``vk`` and ``mesh_hash`` (small
   unsigned ints); read by hand, so the frames of a neighbouring mesh are counted
   ``other_mesh`` before anything else, and no full CBOR decode runs before the tag is
   checked;
3. mesh, version, kind and field count;
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
    ACK_FENCED,
    ACK_OK,
    ACK_REJECTED,
    BATCH,
    BATCH_ACK,
    CLAIM,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    READINGS,
    READINGS_ACK,
    Msg,
)

VERSION = 1
MAX_FRAME_BYTES = 4096  # whole frame, tag included; larger frames are dropped unread
TAG_BYTES = auth.TAG_BYTES

# Replay protection. 32 frames of reordering is more than a mesh of one radio hop shows.
# The window is one int: a small int on 64-bit ports, a short long-int on a 32-bit ESP32.
REPLAY_WINDOW = 32
# A sender silent this long is forgotten: a node that lost its boot counter (flash wiped)
# is accepted again after this quiet time instead of never. Long against the heartbeat
# interval (250 ms default), so a healthy sender is never forgotten.
REPLAY_FORGET_MS = 60000
# Default bound of the replay table; a mesh larger than this evicts the least recently
# heard sender (whose old frames then pass the window once more, until it is heard again).
_MAX_SENDERS = 64

# Drop reasons: the only values ``WireError.reason`` takes.
TOO_BIG = "too_big"  # over MAX_FRAME_BYTES
MALFORMED = "malformed"  # not CBOR, wrong shape, truncated, trailing bytes
BAD_VERSION = "version"  # another wire VERSION
OTHER_MESH = "other_mesh"  # mesh_hash of another mesh
BAD_TAG = "bad_tag"  # missing or wrong HMAC tag
BAD_FIELD = "bad_field"  # unknown kind, or a field of the wrong type or out of range
REPLAYED = "replayed"  # older boot, or a counter already seen or below the window
REASONS = (TOO_BIG, MALFORMED, BAD_VERSION, OTHER_MESH, BAD_TAG, BAD_FIELD, REPLAYED)

# Field ranges. The 32-bit bounds on boot, counter, term and score keep the worst-case
# heartbeat (16-byte id, every field at its maximum) at 53 CBOR bytes + 8 tag <= 64.
MAX_ID_BYTES = 16  # node ids (sender, target, node names in bodies): 1..16 UTF-8 bytes
MAX_NAME_BYTES = 32  # metric names, election reasons, batch ids given as text
MAX_MESH_BYTES = 64  # the mesh name inside a batch
MAX_ITEMS = 256  # readings, ranges and every list inside a batch
MAX_METRICS = 16  # metrics in one reading
U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
I32_MIN = -0x80000000
I32_MAX = 0x7FFFFFFF
I64_MIN = -0x8000000000000000
I64_MAX = 0x7FFFFFFFFFFFFFFF
ACK_STATUSES = (ACK_OK, ACK_FENCED, ACK_REJECTED)

# Number of body fields after [vk, mesh_hash, sender, boot, counter], per kind.
_BODY_FIELDS = {
    HEARTBEAT: 6,
    CLAIM: 2,
    HANDOFF: 3,
    LEAVE: 1,
    READINGS: 3,
    READINGS_ACK: 3,
    BATCH: 2,
    BATCH_ACK: 3,
}
_HEADER_FIELDS = 5
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
# Nesting a frame can need: frame > batch > readings > reading > metrics.
_MAX_DEPTH = 6


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
    ``dumps``/``loads``: CBOR functions; default cbor2 on CPython (MicroPython: pass
    ``cbor.dumps, cbor.loads`` from firmware/lib). ``boot``: this node's persisted boot
    counter, grown at every boot. ``max_senders``: bound of the replay table.
    """

    def __init__(self, mesh, key=None, dumps=None, loads=None, boot=0, max_senders=_MAX_SENDERS):
        if dumps is None or loads is None:
            default_dumps, default_loads = _default_cbor()
            dumps = dumps or default_dumps
            loads = loads or default_loads
        if isinstance(key, (bytes, bytearray, str)) and len(key) == 0:
            raise ValueError("empty mesh key: pass None for unauthenticated frames")
        if type(boot) is not int or not 0 <= boot <= U32:
            raise ValueError("boot must be an int in 0..2**32-1")
        if max_senders < 1:
            raise ValueError("max_senders must be at least 1")
        self.mesh = mesh
        self.mesh_hash = mesh_hash(mesh)
        self._key = None if key is None else auth.as_key(key)
        self._dumps = dumps
        self._loads = loads
        self.boot = boot
        self.counter = 0  # of the last frame encoded; the first frame carries 1
        self.max_senders = max_senders
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
        if counter > U32:
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
            heard = msg.heard if type(msg.heard) is not int or msg.heard <= U16 else U16
            arr.extend((msg.flags, msg.score, heard, msg.battery, msg.link))
        elif kind == CLAIM:
            arr.append(msg.score)
        elif kind == HANDOFF:
            arr.append(msg.target)
            arr.append(msg.flags)
        elif kind == BATCH:
            arr.append(msg.body)
        elif kind != LEAVE:  # READINGS, READINGS_ACK, BATCH_ACK
            arr.append(msg.target)
            arr.append(msg.body)
        # Check with the receiver's rules, so every frame we send is one peers accept.
        why = _check_header(arr[2], arr[3], arr[4]) or _check_body(kind, arr)
        if why:
            raise WireError(BAD_FIELD, why)
        data = self._dumps(arr)
        if type(data) is memoryview:
            # An encoder that reuses its buffer (the firmware's): one exact-size copy, the tag
            # written in place, no ``data + tag``.
            n = len(data)
            frame = bytearray(n + (TAG_BYTES if self._key is not None else 0))
            frame[:n] = data
            if self._key is not None:
                frame[n:] = self._key.tag(data, TAG_BYTES)
            data = frame
        elif self._key is not None:
            data = data + self._key.tag(data, TAG_BYTES)
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
            size -= TAG_BYTES
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
        sender = arr[2]
        boot = arr[3]
        counter = arr[4]
        why = _check_header(sender, boot, counter) or _check_body(kind, arr)
        if why:
            raise WireError(BAD_FIELD, why)
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
        elif kind == BATCH:
            msg.body = arr[6]
        elif kind != LEAVE:
            msg.target = arr[6]
            msg.body = arr[7]
        return msg

    # -- replay window -----------------------------------------------------------------

    def _fresh(self, sender, boot, counter, now):
        # True (and the window moved) if (boot, counter) was not seen from this sender.
        entry = self._senders.get(sender)
        if entry is not None and now - entry[3] >= REPLAY_FORGET_MS:
            entry[0] = -1  # forgotten: any boot is new again
        if entry is None:
            if len(self._senders) >= self.max_senders:
                self._evict()
            self._senders[sender] = [boot, counter, 1, now]
            return True
        if boot < entry[0]:
            return False
        if boot > entry[0]:
            entry[0] = boot
            entry[1] = counter
            entry[2] = 1
        else:
            high = entry[1]
            if counter > high:
                shift = counter - high
                entry[2] = ((entry[2] << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
                entry[1] = counter
            else:
                back = high - counter
                if back >= REPLAY_WINDOW:
                    return False
                bit = 1 << back
                if entry[2] & bit:
                    return False
                entry[2] |= bit
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
    # A list of exactly n items, or of at most MAX_ITEMS when n is -1.
    return type(v) is list and (len(v) == n if n >= 0 else len(v) <= MAX_ITEMS)


def _check_header(sender, boot, counter):
    if not _text(sender, MAX_ID_BYTES):
        return "sender"
    if not _uint(boot, U32):
        return "boot"
    if not _uint(counter, U32):
        return "counter"
    return None


def _check_body(kind, arr):
    # None if the body fields (arr[5:]) suit ``kind``, else the name of the first bad one.
    if not _uint(arr[5], U32):
        return "term"
    if kind == HEARTBEAT:
        if not _uint(arr[6], U8):
            return "flags"
        if not _int(arr[7], I32_MIN, I32_MAX):
            return "score"
        if not _uint(arr[8], U16):
            return "heard"
        if not _uint(arr[9], U16):
            return "battery"
        if not _uint(arr[10], U16):
            return "link"
    elif kind == CLAIM:
        if not _int(arr[6], I32_MIN, I32_MAX):
            return "score"
    elif kind == HANDOFF:
        if not _text(arr[6], MAX_ID_BYTES):
            return "target"
        if not _uint(arr[7], U8):
            return "flags"
    elif kind == LEAVE:
        pass
    elif kind == BATCH:
        return _check_batch(arr[6])
    else:
        if not _text(arr[6], MAX_ID_BYTES):
            return "target"
        body = arr[7]
        if kind == READINGS:
            return _check_readings(body)
        if kind == READINGS_ACK:
            return _check_ranges(body)
        if not (
            _list(body, 3) and _batch_id(body[0]) and _uint(body[1], U8) and _uint(body[2], U32)
        ):
            return "batch_ack"
        if body[1] not in ACK_STATUSES:
            return "batch_ack"
    return None


def _metrics(v):
    if type(v) is not dict or len(v) > MAX_METRICS:
        return False
    for name, value in v.items():
        if not (_text(name, MAX_NAME_BYTES) and _int(value, I64_MIN, I64_MAX)):
            return False
    return True


def _check_readings(body):
    # [[boot, seq, t_ms, {metric: int}], ...]
    if not _list(body):
        return "readings"
    for r in body:
        if not (
            _list(r, 4)
            and _uint(r[0], U32)
            and _uint(r[1], U32)
            and _uint(r[2], U64)
            and _metrics(r[3])
        ):
            return "readings"
    return None


def _check_ranges(body):
    # [[boot, first_seq, last_seq], ...]
    if not _list(body):
        return "ranges"
    for r in body:
        if not (_list(r, 3) and _uint(r[0], U32) and _uint(r[1], U32) and _uint(r[2], U32)):
            return "ranges"
        if r[1] > r[2]:
            return "ranges"
    return None


def _batch_id(v):
    return _uint(v, U64) or _text(v, MAX_NAME_BYTES)


def _batch_reading(r):
    # [node, boot, seq, t_ms, {metric: value}]
    return (
        _list(r, 5)
        and _text(r[0], MAX_ID_BYTES)
        and _uint(r[1], U32)
        and _uint(r[2], U32)
        and _uint(r[3], U64)
        and _metrics(r[4])
    )


def _batch_agg(a):
    # [node, metric, count, min, max, mean]
    return (
        _list(a, 6)
        and _text(a[0], MAX_ID_BYTES)
        and _text(a[1], MAX_NAME_BYTES)
        and _uint(a[2], U64)
        and _int(a[3], I64_MIN, I64_MAX)
        and _int(a[4], I64_MIN, I64_MAX)
        and _int(a[5], I64_MIN, I64_MAX)
    )


def _batch_member(m):
    # [node, score, battery, link, flags, age_ms]
    return (
        _list(m, 6)
        and _text(m[0], MAX_ID_BYTES)
        and _int(m[1], I32_MIN, I32_MAX)
        and _uint(m[2], U16)
        and _uint(m[3], U16)
        and _uint(m[4], U8)
        and _uint(m[5], U64)
    )


def _batch_dropped(d):
    # [node, count]
    return _list(d, 2) and _text(d[0], MAX_ID_BYTES) and _uint(d[1], U64)


def _batch_election(e):
    # [term, leader or null, reason (text or int code)]
    return (
        _list(e, 3)
        and _uint(e[0], U32)
        and (e[1] is None or _text(e[1], MAX_ID_BYTES))
        and (_uint(e[2], U32) or _text(e[2], MAX_NAME_BYTES))
    )


# Optional list-valued batch keys and the check for each of their items.
_BATCH_LISTS = {
    "readings": _batch_reading,
    "agg": _batch_agg,
    "members": _batch_member,
    "dropped": _batch_dropped,
    "elections": _batch_election,
}


def _check_batch(batch):
    # The batch map of docs/design.md ("The data path"). "id" and "readings" are required;
    # every other known key is optional; an unknown key is refused (the code is the spec).
    # items(), and the type check before any ==, keep str and bytes keys from ever being
    # compared (MicroPython prints a warning for that).
    if type(batch) is not dict:
        return "batch"
    required = 0
    for key, value in batch.items():
        if type(key) is not str:
            return "batch"
        if key == "id":
            ok = _batch_id(value)
            required += 1
        elif key == "mesh":
            ok = _text(value, MAX_MESH_BYTES)
        elif key == "leader":
            ok = _text(value, MAX_ID_BYTES)
        else:
            check = _BATCH_LISTS.get(key)
            if check is None or not _list(value):
                return "batch"
            if key == "readings":
                required += 1
            ok = True
            for item in value:
                if not check(item):
                    ok = False
                    break
        if not ok:
            return "batch"
    return None if required == 2 else "batch"


# The tags cbor2 6.3 decodes on its own (found by probing tags 0..300 and the registered
# large ones). A tag missing here still cannot pass: its value fails the field checks.
_CBOR2_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_CBOR2_TAGS += (1004, 43000, 55799)


def _default_cbor():
    # cbor2 on CPython, made strict: no indefinite lengths, no tags, no trailing bytes,
    # bounded depth. Imported here, not at module level, so MicroPython never needs it.
    try:
        import io

        import cbor2
    except ImportError:
        try:
            import cbor  # firmware/lib/cbor.py, on a board's /lib

            return cbor.dumps, cbor.loads
        except ImportError:
            raise ImportError("no CBOR codec: pass dumps= and loads= to Codec") from None

    def no_tags(decoder, tag=None):
        raise ValueError("CBOR tags are not used on the wire")

    # cbor2 decodes these tags itself (dates, bignums, shared values, regexes, ...) and
    # calls ``tag_hook`` only for the others: override each, so every tag is refused.
    builtin = {}
    for number in _CBOR2_TAGS:
        builtin[number] = no_tags

    def loads(data):
        fp = io.BytesIO(data)
        decoder = cbor2.CBORDecoder(
            fp,
            tag_hook=no_tags,
            semantic_decoders=builtin,
            max_depth=_MAX_DEPTH,
            allow_indefinite=False,
        )
        value = decoder.decode()
        if fp.tell() != len(data):
            raise ValueError("trailing bytes after the CBOR item")
        return value

    return cbor2.dumps, loads
