"""Small shims so the core runs on CPython and MicroPython alike.

The election core (node, peers, score, prng) imports ``const`` as
``try: from micropython import const`` / ``except ImportError: from agent.core._compat import
const``, so a board need not load this module for them (a module costs heap there).
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython

    def const(x):  # type: ignore[no-redef]
        return x
