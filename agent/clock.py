"""The agent's election clock: monotonic milliseconds that can be paused.

Over MQTT nobody hears anybody while the broker is unreachable; letting the election time out
then would make every node claim and merge when the broker returns. So the runtime pauses this
clock while the broker is gone and resumes it when the leader is heard again (or after a grace
period, so a leader that died meanwhile is still replaced). See `Agent._on_connection`.
"""

from __future__ import annotations

import time


class PausableClock:
    """Monotonic milliseconds since creation, not counting the time spent paused."""

    def __init__(self) -> None:
        self._origin = time.monotonic()
        self._paused_at: float | None = None
        self._paused_total = 0.0

    def now(self) -> int:
        real = self._paused_at if self._paused_at is not None else time.monotonic()
        return int((real - self._origin - self._paused_total) * 1000)

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None


def real_ms() -> int:
    """Monotonic milliseconds that never pause (sampling and status follow real time)."""
    return int(time.monotonic() * 1000)
