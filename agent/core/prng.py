"""A tiny seeded PRNG (xorshift32) that gives the same numbers on CPython and MicroPython.

The core must not use the ``random`` module: its algorithms differ between the runtimes, and the
replay contract demands identical decisions on both.
"""

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const

_MASK32 = const(0xFFFFFFFF)


def fnv1a32(text):
    """32-bit FNV-1a hash of a str, for deriving per-node seeds."""
    h = 0x811C9DC5
    for b in text.encode():
        h = ((h ^ b) * 0x01000193) & _MASK32
    return h


class Prng:
    def __init__(self, seed):
        state = (seed * 2654435761 + 0x9E3779B9) & _MASK32
        self.state = state or 1

    def next(self):
        x = self.state
        x ^= (x << 13) & _MASK32
        x ^= x >> 17
        x ^= (x << 5) & _MASK32
        self.state = x
        return x

    def below(self, n):
        """An int in 0..n-1 (n > 0)."""
        return self.next() % n
