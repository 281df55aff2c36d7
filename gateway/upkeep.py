"""The timer's storage chores: retention purges, WAL checkpoints, and probing a failing storage.

Run on the worker thread once per tick. Nothing here raises a storage error: every failure goes
to :class:`gateway.health.Health` (logged once per change, counted) and is retried: a purge
after ``retention.RETRY_MS``, a checkpoint and a probe write at every tick while the storage
fails. A TRUNCATE checkpoint gives the write-ahead log's disk space back, which SQLite never
does by itself: after a full disk the log may have taken all the space there was. Purges use
the reference times of :mod:`gateway.retention`, so a clock step deletes nothing early.
"""

from __future__ import annotations

import logging

from gateway.health import Health
from gateway.metrics import Counters
from gateway.retention import Retention
from gateway.storage import Storage, StorageError

log = logging.getLogger("meshelect.gateway")


class Upkeep:
    def __init__(
        self, storage: Storage, retention: Retention, health: Health, counters: Counters
    ) -> None:
        self.storage = storage
        self.retention = retention
        self.health = health
        self.counters = counters

    def start(self, wall_ms: int, mono_ms: int) -> None:
        try:
            saved = self.storage.retention_state()
        except StorageError as exc:
            self.health.storage_failed("purge", exc, wall_ms)
            saved = (None, None)
        self.retention.start(saved, wall_ms, mono_ms)

    def observe(self, wall_ms: int, mono_ms: int) -> int | None:
        """Compare the clocks at every read of the wall clock; the step (ms) if it stepped."""
        step = self.retention.observe(wall_ms, mono_ms)
        if step is not None:
            self.health.clock_stepped(step, wall_ms)
        return step

    def tick(self, wall_ms: int, mono_ms: int) -> None:
        """The chores due now (the caller has just observed the clocks)."""
        if self.retention.due(mono_ms):
            self._purge(wall_ms, mono_ms)
        if self.health.degraded:
            self._checkpoint(wall_ms)
            self._probe(wall_ms)
        self.health.set_held_back(self.retention.held_back_ms(wall_ms, mono_ms))

    def _purge(self, wall_ms: int, mono_ms: int) -> None:
        raw_now, agg_now = self.retention.references(wall_ms, mono_ms)
        try:
            purged = self.storage.purge(raw_now, agg_now)
        except StorageError as exc:
            self.health.storage_failed("purge", exc, wall_ms)
            self.retention.done(mono_ms, ok=False)
            return
        self.health.storage_wrote()
        self.retention.done(mono_ms, ok=True)
        self.counters.purges += 1
        self.counters.purged_readings += purged.raw
        if any(purged):
            log.info(
                "retention: deleted %d raw readings, %d aggregates, %d elections, %d alerts",
                *purged,
            )
        self._checkpoint(wall_ms)  # deleted rows free pages: give the log's space back too

    def _checkpoint(self, wall_ms: int) -> None:
        try:
            if self.storage.checkpoint():
                self.counters.checkpoints += 1
        except StorageError as exc:
            self.health.storage_failed("checkpoint", exc, wall_ms)

    def _probe(self, wall_ms: int) -> None:
        try:
            self.storage.probe(wall_ms)
        except StorageError as exc:
            self.health.storage_failed("probe", exc, wall_ms)
            return
        self.health.storage_wrote()
