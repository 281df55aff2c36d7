"""Retention that a clock step cannot move: when to purge, and how far back a purge may delete.

Sans-IO: the caller passes the wall clock (ms since the epoch) and the monotonic clock (ms).

Rows carry the gateway's wall-clock time of arrival, and a purge deletes rows older than the
retention period. If the wall clock jumps 8 days forward, "now - 7 days" covers every row. So a
purge does not take the wall clock as it is; it uses a reference time that moves only as far as
the gateway has seen time pass on its monotonic clock::

    reference = min(wall clock, last reference + monotonic time elapsed since)

The wall clock is taken as it is again once it has agreed with the monotonic clock (no step)
for a whole retention period: every row stored before the step is then older than the period
in time the gateway itself observed, so deleting by the wall clock cannot take any row early.
After a (re)start the gateway cannot tell downtime from a step, so it goes on from the reference
it saved at its last purge as if no time had passed, and trusts the wall clock after a period;
the cost is keeping rows longer by the downtime. A backward step needs nothing: the min()
follows the wall clock, and rows stored meanwhile carry the stepped-back times.

Steps are detected every tick (wall and monotonic time disagreeing by more than
``STEP_TOLERANCE_MS``), logged and counted by the caller.
"""

from __future__ import annotations

# Wall and monotonic clocks disagreeing by more than this between two ticks is a step. NTP slews
# a clock by at most 0.5 ms per second, far below it.
STEP_TOLERANCE_MS = 2_000
# A purge that failed (the database refused it) is tried again this soon.
RETRY_MS = 10_000


class ReferenceClock:
    """The reference time for one retention period (see the module docstring)."""

    def __init__(self, period_ms: int) -> None:
        self.period_ms = period_ms
        self._ref: int | None = None  # the last reference time given out
        self._ref_mono = 0  # monotonic time when it was
        self._doubt_until: int | None = None  # monotonic time the wall clock is trusted again

    def start(self, saved_ms: int | None, wall_ms: int, mono_ms: int) -> None:
        """Go on from the reference saved by the last purge (None: a new database, nothing
        stored before this start to protect, so the wall clock is taken as it is)."""
        self._ref = wall_ms if saved_ms is None else min(wall_ms, saved_ms)
        self._ref_mono = mono_ms
        if saved_ms is not None:
            self._doubt_until = mono_ms + self.period_ms

    def doubt(self, mono_ms: int) -> None:
        """The wall clock stepped: do not take it as it is for a whole period."""
        self._doubt_until = mono_ms + self.period_ms

    def peek(self, wall_ms: int, mono_ms: int) -> int:
        """The reference time now, without moving on from it."""
        if self._doubt_until is not None and mono_ms >= self._doubt_until:
            self._doubt_until = None
        if self._doubt_until is None or self._ref is None:
            return wall_ms
        return min(wall_ms, self._ref + (mono_ms - self._ref_mono))

    def take(self, wall_ms: int, mono_ms: int) -> int:
        """The reference time for a purge now; later references are bounded from it."""
        ref = self.peek(wall_ms, mono_ms)
        self._ref, self._ref_mono = ref, mono_ms
        return ref


class Retention:
    """Step detection, the purge schedule, and a reference clock each for raw readings and
    for aggregates (each trusts the wall clock again after its own period)."""

    def __init__(self, raw_ms: int, aggregate_ms: int, every_ms: int) -> None:
        self.every_ms = every_ms
        self.raw = ReferenceClock(raw_ms)
        self.aggregates = ReferenceClock(aggregate_ms)
        self.steps = 0
        self.last_step_ms = 0  # size of the last step (+ forward, - backward)
        self._last: tuple[int, int] | None = None  # (wall, monotonic) at the last observe
        self._next_purge: int | None = None  # monotonic; None: at the first chance

    def start(self, saved: tuple[int | None, int | None], wall_ms: int, mono_ms: int) -> None:
        self.raw.start(saved[0], wall_ms, mono_ms)
        self.aggregates.start(saved[1], wall_ms, mono_ms)
        self._last = (wall_ms, mono_ms)

    def observe(self, wall_ms: int, mono_ms: int) -> int | None:
        """Compare the clocks (every tick); the step in ms when the wall clock stepped."""
        last, self._last = self._last, (wall_ms, mono_ms)
        if last is None:
            return None
        step = (wall_ms - last[0]) - (mono_ms - last[1])
        if abs(step) <= STEP_TOLERANCE_MS:
            return None
        self.steps += 1
        self.last_step_ms = step
        self.raw.doubt(mono_ms)
        self.aggregates.doubt(mono_ms)
        return step

    def due(self, mono_ms: int) -> bool:
        return self._next_purge is None or mono_ms >= self._next_purge

    def references(self, wall_ms: int, mono_ms: int) -> tuple[int, int]:
        """(raw, aggregates) reference times for the purge about to run."""
        return self.raw.take(wall_ms, mono_ms), self.aggregates.take(wall_ms, mono_ms)

    def done(self, mono_ms: int, ok: bool) -> None:
        """Schedule the next purge: after the interval, or soon again after a failure."""
        self._next_purge = mono_ms + (self.every_ms if ok else min(self.every_ms, RETRY_MS))

    def held_back_ms(self, wall_ms: int, mono_ms: int) -> int:
        """How far raw-reading retention lags the wall clock now (0 when it trusts it)."""
        return wall_ms - self.raw.peek(wall_ms, mono_ms)
