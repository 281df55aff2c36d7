"""A small CBOR (RFC 8949) codec for the firmware: the subset the meshelect wire uses.

API mirrors cbor2: ``dumps(obj) -> bytes`` and ``loads(data) -> obj``.

Encoding gives the same bytes as cbor2's default (``canonical=False``) for ints from -2**64 to
2**64-1, bytes/bytearray, str, list/tuple, dict (keys in the dict's own iteration order, as
cbor2 does), False/True/None and floats (cbor2 writes NaN and the infinities as 2-byte halves,
every other float as an 8-byte double). Definite lengths only.

Decoding accepts the same types plus half/single floats, and rejects, with ``CBORDecodeError``
and nothing else: indefinite lengths, tags, simple values other than false/true/null, lengths
longer than the input, trailing bytes, nesting deeper than ``_MAX_DEPTH``, invalid UTF-8
(strictly as CPython: no overlong forms, no surrogates), and arrays or maps as map keys.

Runs on CPython and MicroPython (no typing, no f-strings, no dict-order reliance). Recursion
is bounded by ``_MAX_DEPTH``; lists are allocated once at their final size.
"""

import struct

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython

    def const(x):  # type: ignore[no-redef]
        return x


# Deep enough for every wire frame (frame > batch > readings > reading > metrics is 5),
# shallow enough that the recursion is harmless on an ESP32's small stack.
_MAX_DEPTH = const(16)

_MAJOR_UINT = const(0x00)
_MAJOR_NINT = const(0x20)
_MAJOR_BYTES = const(0x40)
_MAJOR_TEXT = const(0x60)
_MAJOR_ARRAY = const(0x80)
_MAJOR_MAP = const(0xA0)
_MAX_UINT64 = const(0xFFFFFFFFFFFFFFFF)  # (a const: no module global, no interned name)


class CBORDecodeError(ValueError):
    """The input is not CBOR of the supported subset (the only error ``loads`` raises)."""


class CBOREncodeError(ValueError):
    """The value cannot be encoded (unsupported type, int out of 64-bit range, too deep)."""


# ---------------------------------------------------------------------------------------
# Encoding


def dumps(obj):
    """Encode ``obj`` as CBOR bytes, byte-for-byte as cbor2.dumps does for these types."""
    out = bytearray()
    _encode(out, obj, 0)
    return bytes(out)


class Encoder:
    """``dumps`` into one buffer kept for the encoder's life: a frame costs no growing copies.

    ``dumps`` returns a memoryview of the buffer, valid until the next call (``Codec.encode``
    copies it once into the frame, with the tag). The buffer grows, once, for a bigger value.
    """

    def __init__(self, size=1536):
        self.buf = bytearray(size)
        self.pos = 0

    def dumps(self, obj):
        self.pos = 0
        _encode(self, obj, 0)
        return memoryview(self.buf)[: self.pos]

    # ``_encode`` writes through these two, as it does to a bytearray.
    def append(self, byte):
        if self.pos >= len(self.buf):
            self._grow(1)
        self.buf[self.pos] = byte
        self.pos += 1

    def extend(self, data):
        p = self.pos
        n = len(data)
        if p + n > len(self.buf):
            self._grow(n)
        self.buf[p : p + n] = data
        self.pos = p + n

    def _grow(self, n):
        bigger = bytearray(max(2 * len(self.buf), self.pos + n))
        bigger[: self.pos] = memoryview(self.buf)[: self.pos]
        self.buf = bigger


def _head(out, major, n):
    # The shortest head for ``n``, as RFC 8949 preferred serialization (and cbor2) does.
    if n < 24:
        out.append(major | n)
    elif n < 0x100:
        out.append(major | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(major | 25)
        out.append(n >> 8)
        out.append(n & 0xFF)
    elif n < 0x100000000:
        out.append(major | 26)
        out.extend(struct.pack(">I", n))
    else:
        out.append(major | 27)
        out.extend(struct.pack(">Q", n))


def _encode(out, obj, depth):
    t = type(obj)
    if t is int:
        if obj >= 0:
            if obj > _MAX_UINT64:
                raise CBOREncodeError("int too large for 64 bits")
            _head(out, _MAJOR_UINT, obj)
        else:
            n = -1 - obj
            if n > _MAX_UINT64:
                raise CBOREncodeError("int too small for 64 bits")
            _head(out, _MAJOR_NINT, n)
    elif t is str:
        b = obj.encode()
        _head(out, _MAJOR_TEXT, len(b))
        out.extend(b)
    elif t is bytes or t is bytearray:
        _head(out, _MAJOR_BYTES, len(obj))
        out.extend(obj)
    elif t is list or t is tuple:
        if depth >= _MAX_DEPTH:
            raise CBOREncodeError("nested too deep")
        _head(out, _MAJOR_ARRAY, len(obj))
        for item in obj:
            _encode(out, item, depth + 1)
    elif t is dict:
        if depth >= _MAX_DEPTH:
            raise CBOREncodeError("nested too deep")
        _head(out, _MAJOR_MAP, len(obj))
        # Iteration order is the dict's own: insertion order on CPython (as cbor2), hash
        # order on MicroPython. The wire never gives map order a meaning.
        for key in obj:
            _encode(out, key, depth + 1)
            _encode(out, obj[key], depth + 1)
    elif obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif t is float:
        if obj != obj:
            out.extend(b"\xf9\x7e\x00")  # NaN, as cbor2 writes it
        elif obj - obj != 0:  # infinite (inf - inf is NaN; no module global: one name less)
            out.extend(b"\xf9\x7c\x00" if obj > 0 else b"\xf9\xfc\x00")
        else:
            out.append(0xFB)
            out.extend(struct.pack(">d", obj))
    else:
        raise CBOREncodeError("cannot encode type %s" % t.__name__)


# ---------------------------------------------------------------------------------------
# Decoding


def loads(data):
    """Decode one CBOR item that fills ``data`` exactly (bytes, bytearray or memoryview)."""
    dec = _Decoder(data)
    value = dec.item(0)
    if dec.pos != dec.end:
        raise CBORDecodeError("trailing bytes")
    return value


class _Decoder:
    # One object per ``loads`` call holds the buffer and position, so that the per-item
    # functions allocate nothing but the values they return.

    def __init__(self, data):
        self.buf = memoryview(data)
        self.pos = 0
        self.end = len(data)

    def _take(self, n):
        # Reserve ``n`` bytes at the current position and return where they start.
        p = self.pos
        if n > self.end - p:
            raise CBORDecodeError("length beyond end of input")
        self.pos = p + n
        return p

    def _uint(self, ai):
        # The argument of a head whose additional information is ``ai``.
        if ai < 24:
            return ai
        if ai == 24:
            return self.buf[self._take(1)]
        if ai == 25:
            n = 2
        elif ai == 26:
            n = 4
        elif ai == 27:
            n = 8
        else:
            # 28..30 are reserved, 31 is an indefinite length or a break.
            raise CBORDecodeError("indefinite length or reserved head")
        p = self._take(n)
        b = self.buf
        v = 0
        for i in range(p, p + n):
            v = (v << 8) | b[i]
        return v

    def item(self, depth):
        b0 = self.buf[self._take(1)]
        major = b0 & 0xE0
        ai = b0 & 0x1F
        if major == 0xE0:
            return self._simple(ai)
        if major == 0xC0:
            raise CBORDecodeError("tags are not supported")
        n = self._uint(ai)
        if major == _MAJOR_UINT:
            return n
        if major == _MAJOR_NINT:
            return -1 - n
        if major == _MAJOR_BYTES:
            p = self._take(n)
            return bytes(self.buf[p : p + n])
        if major == _MAJOR_TEXT:
            p = self._take(n)
            return _text(self.buf[p : p + n], n)
        if depth >= _MAX_DEPTH:
            raise CBORDecodeError("nested too deep")
        depth += 1
        if major == _MAJOR_ARRAY:
            # Every item takes at least one byte: refuse counts the input cannot hold
            # before allocating the list.
            if n > self.end - self.pos:
                raise CBORDecodeError("array longer than input")
            out = [None] * n
            for i in range(n):
                out[i] = self.item(depth)
            return out
        # major == _MAJOR_MAP
        if n > (self.end - self.pos) >> 1:
            raise CBORDecodeError("map longer than input")
        out = {}
        for _ in range(n):
            kb = self.buf[self.pos] if self.pos < self.end else 0
            if kb & 0xC0 == 0x80:  # an array (0x80..0x9f) or map (0xa0..0xbf) key
                raise CBORDecodeError("unhashable map key")
            key = self.item(depth)
            out[key] = self.item(depth)
        return out

    def _simple(self, ai):
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            p = self._take(2)
            return _half((self.buf[p] << 8) | self.buf[p + 1])
        if ai == 26:
            p = self._take(4)
            return struct.unpack(">f", self.buf[p : p + 4])[0]
        if ai == 27:
            p = self._take(8)
            return struct.unpack(">d", self.buf[p : p + 8])[0]
        raise CBORDecodeError("unsupported simple value or break")


def _half(h):
    # IEEE 754 binary16 to float (MicroPython's struct has no "e" format).
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = mant / 16777216.0  # subnormal: mant * 2**-24
    elif exp == 31:
        v = float("inf") if mant == 0 else float("nan")
    else:
        v = (mant + 1024) * (2.0 ** (exp - 25))
    return -v if h & 0x8000 else v


def _text(raw, n):
    try:
        s = str(raw, "utf-8")
    except Exception:  # UnicodeError (CPython: UnicodeDecodeError)
        raise CBORDecodeError("invalid UTF-8") from None
    if len(s) != n:
        # Not pure ASCII. MicroPython's decoder accepts overlong forms, surrogates and code
        # points past U+10FFFF; check strictly so both runtimes accept the same strings.
        _check_utf8(raw, n)
    return s


def _check_utf8(b, n):
    # RFC 3629 section 4: the well-formed byte sequences.
    i = 0
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            follow, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            follow, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            follow, lo, hi = 2, 0x80, 0x9F  # no UTF-16 surrogates
        elif 0xE1 <= c <= 0xEF:
            follow, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            follow, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            follow, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            follow, lo, hi = 3, 0x80, 0x8F  # nothing past U+10FFFF
        else:
            raise CBORDecodeError("invalid UTF-8")
        if i + follow >= n:
            raise CBORDecodeError("invalid UTF-8")
        c = b[i + 1]
        if c < lo or c > hi:
            raise CBORDecodeError("invalid UTF-8")
        for j in range(i + 2, i + 1 + follow):
            if b[j] & 0xC0 != 0x80:
                raise CBORDecodeError("invalid UTF-8")
        i += 1 + follow
