"""What is wrong with the gateway right now, for ``/healthz``, ``/metrics`` and the dashboard.

Storage is failing from its first error (a full disk, an I/O error) until writes have worked,
with no error, for ``RECOVER_TICKS`` timer ticks in a row: a nearly full disk that takes small
writes and refuses big ones stays "failing" instead of flapping. That is logged once when it
starts, once when the error changes and once when it ends; every error is counted by task.
Meanwhile the gateway acknowledges nothing it has not stored and keeps its alerts in memory.

The wall clock's steps (gateway/retention.py) are logged and counted; while retention does not
trust the wall clock after a step, ``/healthz`` says so.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.metrics import Counters

log = logging.getLogger("meshelect.gateway")

RECOVER_TICKS = 3


class Health:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.storage_error: str | None = None
        self.storage_task = ""
        self.storage_since_ms = 0
        self.last_step_ms = 0  # size of the last wall-clock step
        self.last_step_at_ms = 0
        self.retention_held_back_ms = 0  # set by the gateway every tick
        self.version = 0  # grows with every change worth publishing
        self._errors = 0  # since the last tick
        self._writes = 0
        self._clean_ticks = 0

    @property
    def degraded(self) -> bool:
        return self.storage_error is not None

    def storage_failed(self, task: str, error: Exception, now_ms: int) -> None:
        """A storage operation of ``task`` (ingest, alerts, purge...) failed with ``error``."""
        self.counters.count_storage_error(task)
        self._errors += 1
        self._clean_ticks = 0
        text = str(error)
        if self.storage_error is None:
            log.warning(
                "storage failing (%s): %s; nothing unstored is acknowledged, alerts wait in "
                "memory, retrying",
                task,
                text,
            )
            self.storage_since_ms = now_ms
            self.version += 1
        elif text != self.storage_error:
            log.warning("storage still failing (%s): %s", task, text)
            self.version += 1
        self.storage_error = text
        self.storage_task = task

    def storage_wrote(self) -> None:
        """A write transaction committed."""
        self._writes += 1

    def tick(self, now_ms: int) -> None:
        """Once per timer tick: decide whether failing storage works again."""
        if self.storage_error is not None:
            if self._errors:
                self._clean_ticks = 0
            elif self._writes:
                self._clean_ticks += 1
            if self._clean_ticks >= RECOVER_TICKS:
                log.warning(
                    "storage works again after %d s (it failed with: %s)",
                    (now_ms - self.storage_since_ms) // 1000,
                    self.storage_error,
                )
                self.storage_error = None
                self._clean_ticks = 0
                self.version += 1
        self._errors = self._writes = 0

    def clock_stepped(self, step_ms: int, now_ms: int) -> None:
        self.counters.clock_steps += 1
        self.last_step_ms = step_ms
        self.last_step_at_ms = now_ms
        log.warning(
            "the wall clock stepped %+.1f s; retention counts only time the gateway observed "
            "itself until the wall clock has agreed with it for a retention period",
            step_ms / 1000,
        )
        self.version += 1

    def set_held_back(self, held_back_ms: int) -> None:
        if (held_back_ms > 0) != (self.retention_held_back_ms > 0) and self.counters.clock_steps:
            self.version += 1
        self.retention_held_back_ms = held_back_ms

    def problems(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.storage_error is not None:
            out.append(
                {
                    "what": "storage",
                    "severity": "error",
                    "task": self.storage_task,
                    "error": self.storage_error,
                    "since_ms": self.storage_since_ms,
                    "message": "storage failing: %s (nothing unstored is acknowledged)"
                    % self.storage_error,
                }
            )
        if self.counters.clock_steps and self.retention_held_back_ms > 0:
            out.append(
                {
                    "what": "clock",
                    "severity": "warning",
                    "step_ms": self.last_step_ms,
                    "at_ms": self.last_step_at_ms,
                    "retention_held_back_ms": self.retention_held_back_ms,
                    "message": "wall clock stepped %+d s; retention held back %d s"
                    % (round(self.last_step_ms / 1000), round(self.retention_held_back_ms / 1000)),
                }
            )
        return out
