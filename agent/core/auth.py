"""HMAC-SHA256 frame tags, built from ``hashlib.sha256`` alone.

MicroPython has ``hashlib.sha256`` but no usable ``hmac`` (no ``compare_digest``), so the
RFC 2104 construction is written out here: H((K ^ opad) || H((K ^ ipad) || data)), block
size 64. The same code runs on CPython, where tests check it against the ``hmac`` module.
"""

import hashlib

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const


_BLOCK_BYTES = const(64)  # SHA-256 block size (RFC 2104 "B")
_DIGEST_BYTES = const(32)
TAG_BYTES = const(8)  # the wire's tag: first 8 bytes of the HMAC (docs/design.md)


class Key:
    """A key with its padded inner and outer blocks computed once.

    Every frame is tagged or verified with the same mesh key, so the two XORs over 64 bytes
    are done here and not per frame (they cost more than the hashing on MicroPython).
    """

    def __init__(self, key):
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("key must be bytes or str")
        if len(key) > _BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        padded = bytearray(_BLOCK_BYTES)
        padded[: len(key)] = key
        inner = bytearray(_BLOCK_BYTES)
        outer = bytearray(_BLOCK_BYTES)
        for i in range(_BLOCK_BYTES):
            inner[i] = padded[i] ^ 0x36
            outer[i] = padded[i] ^ 0x5C
        self._inner = bytes(inner)
        self._outer = bytes(outer)

    def digest(self, data):
        """The full 32-byte HMAC-SHA256 of ``data`` (any buffer)."""
        h = hashlib.sha256(self._inner)
        h.update(data)
        o = hashlib.sha256(self._outer)
        o.update(h.digest())
        return o.digest()

    def tag(self, data, n=TAG_BYTES):
        """The first ``n`` bytes (1..32) of the HMAC of ``data``."""
        if not 1 <= n <= _DIGEST_BYTES:
            raise ValueError("tag length must be 1..32")
        d = self.digest(data)
        return d if n == _DIGEST_BYTES else d[:n]

    def verify(self, data, tag):
        """True if ``tag`` (1..32 bytes) is the truncated HMAC of ``data``; constant time."""
        n = len(tag)
        if not 1 <= n <= _DIGEST_BYTES:
            # An empty tag would compare equal to anything: never accept it.
            return False
        return equal(self.digest(data)[:n], tag)


def equal(a, b):
    """Compare two byte strings in time that depends only on their length.

    The lengths are not secret (the tag length is fixed by the protocol), the contents are:
    an early exit would tell an attacker how many leading tag bytes were right.
    """
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
