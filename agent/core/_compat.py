"""Small shims so the core runs on CPython and MicroPython alike."""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython

    def const(x):  # type: ignore[no-redef]
        return x


__all__ = ["const"]
