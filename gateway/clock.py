"""The gateway's clocks: wall time (ms since the epoch) for timestamps, monotonic ms for durations.

Test hook (inert in production): when the environment variable ``MESHELECT_GATEWAY_TEST_CLOCK_FILE``
names a file, the wall clock adds the whole number of milliseconds written in that file (read
again whenever the file changes; a missing or unreadable file counts as 0). A test steps a
running gateway's wall clock by writing, say, ``691200000`` (8 days) there. Only the gateway's
wall clock moves; its monotonic clock, and every other process's clock, are untouched. The
gateway logs a warning at start when the hook is on. Without the variable the wall clock is
plain ``time.time()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

CLOCK_FILE_ENV = "MESHELECT_GATEWAY_TEST_CLOCK_FILE"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def mono_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class OffsetWallClock:
    """``wall_ms()`` plus the offset (ms) written in ``path``: the test hook above."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._offset = 0

    def __call__(self) -> int:
        try:
            status = os.stat(self.path)
            stamp: tuple[int, int] | None = (status.st_mtime_ns, status.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            self._offset = self._read()
        return wall_ms() + self._offset

    @property
    def offset_ms(self) -> int:
        return self._offset

    def _read(self) -> int:
        try:
            with open(self.path) as fp:
                return int(fp.read().strip() or 0)
        except (OSError, ValueError):
            return 0


def wall_clock() -> Callable[[], int]:
    """The wall clock the gateway runs on: the test hook if the environment asks for it."""
    path = os.environ.get(CLOCK_FILE_ENV)
    return OffsetWallClock(path) if path else wall_ms
