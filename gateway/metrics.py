"""The gateway's counters, and their Prometheus text exposition (``/metrics``).

Counters are plain integers bumped by the ingest path (cheap, no locks: everything runs on the
event loop). At scrape time a prometheus_client collector turns them into metric families, so
names, ``_total`` suffixes, label escaping and the text format follow that ecosystem exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The live ingest rate is averaged over this window (the counter is the source of truth).
RATE_WINDOW_MS = 10_000
# The ``status`` label of meshelect_gateway_batches for each BATCH_ACK status.
_ACK_LABELS = {ACK_OK: "ok", ACK_FENCED: "fenced", ACK_REJECTED: "rejected"}


class Counters:
    def __init__(self) -> None:
        self.batches: dict[tuple[str, str], int] = {}  # (transport, status) -> count
        self.frames_dropped: dict[tuple[str, str], int] = {}  # (transport, reason) -> count
        self.readings_received = 0
        self.readings_stored = 0
        self.dedup_hits = 0
        self.boot_reuse = 0  # readings whose id another reading had: stored apart
        self.fenced = 0
        self.elections = 0
        self.lost_readings = 0
        self.alerts_raised = 0
        self.sse_clients = 0
        self.storage_errors: dict[str, int] = {}  # task -> failed storage operations
        self.held_dropped = 0  # alerts/elections dropped from a full hold while storage failed
        self.term_jumps_refused = 0
        self.fence_resets = 0  # operator fence resets this process applied
        self.clock_steps = 0
        self.purges = 0
        self.purged_readings = 0
        self.checkpoints = 0  # WAL checkpoints (TRUNCATE) that completed
        self.task_errors = 0  # timer ticks that failed with an unexpected error (a bug)
        self.decoder_restarts = 0  # frame decoder processes started again after they ended
        self._recent: deque[tuple[int, int]] = deque()  # (ms, readings stored)

    def count_batch(self, transport: str, status: int, label: str | None = None) -> None:
        """One batch answered with the BATCH_ACK ``status`` (agent.core.messages.ACK_*);
        ``label`` names a finer outcome than the status (``refused``, ``unstored``)."""
        key = (transport, label or _ACK_LABELS[status])
        self.batches[key] = self.batches.get(key, 0) + 1

    def count_drop(self, transport: str, reason: str) -> None:
        key = (transport, reason)
        self.frames_dropped[key] = self.frames_dropped.get(key, 0) + 1

    def count_storage_error(self, task: str) -> None:
        self.storage_errors[task] = self.storage_errors.get(task, 0) + 1

    def count_stored(self, readings: int, now_ms: int) -> None:
        self.readings_stored += readings
        self._recent.append((now_ms, readings))
        self._trim(now_ms)

    def ingest_rate(self, now_ms: int) -> float:
        """Readings stored per second over the last RATE_WINDOW_MS."""
        self._trim(now_ms)
        return sum(n for _, n in self._recent) * 1000.0 / RATE_WINDOW_MS

    def _trim(self, now_ms: int) -> None:
        while self._recent and now_ms - self._recent[0][0] > RATE_WINDOW_MS:
            self._recent.popleft()


# (metric name without _total, help, Counters attribute) of the label-free counters.
_PLAIN_COUNTERS = [
    ("meshelect_gateway_readings_received", "Readings in accepted batches.", "readings_received"),
    ("meshelect_gateway_readings_stored", "Readings stored (first copies).", "readings_stored"),
    ("meshelect_gateway_dedup_hits", "Readings already stored (duplicates).", "dedup_hits"),
    (
        "meshelect_gateway_boot_reuse",
        "Readings whose (node, boot, seq) another reading had: stored apart, not dropped.",
        "boot_reuse",
    ),
    ("meshelect_gateway_fenced_batches", "Batches refused for a stale term.", "fenced"),
    ("meshelect_gateway_elections", "Elections recorded.", "elections"),
    (
        "meshelect_gateway_lost_readings",
        "Readings members reported dropped because their buffer was full.",
        "lost_readings",
    ),
    ("meshelect_gateway_alerts_raised", "Alerts raised.", "alerts_raised"),
    (
        "meshelect_gateway_held_dropped",
        "Alerts/elections dropped because too many waited for a failing storage.",
        "held_dropped",
    ),
    (
        "meshelect_gateway_term_jumps_refused",
        "Batches refused: a term jump from a sender never seen in the mesh.",
        "term_jumps_refused",
    ),
    ("meshelect_gateway_fence_resets", "Operator fence resets applied.", "fence_resets"),
    ("meshelect_gateway_clock_steps", "Steps of the gateway's wall clock.", "clock_steps"),
    ("meshelect_gateway_purges", "Retention purges completed.", "purges"),
    ("meshelect_gateway_purged_readings", "Raw readings deleted by retention.", "purged_readings"),
    (
        "meshelect_gateway_wal_checkpoints",
        "Write-ahead log checkpoints (TRUNCATE) completed.",
        "checkpoints",
    ),
    (
        "meshelect_gateway_task_errors",
        "Timer ticks that failed with an unexpected error.",
        "task_errors",
    ),
    (
        "meshelect_gateway_decoder_restarts",
        "Frame decoder processes started again after one ended.",
        "decoder_restarts",
    ),
]


class _GatewayCollector(Collector):
    def __init__(self, counters: Counters, meshes: Any, clock: Any, state: Any) -> None:
        self._counters = counters
        self._meshes = meshes  # callable -> list of {"name", "term", "leader", "members"}
        self._clock = clock  # callable -> now in ms
        # callable -> {"degraded", "held_changes", "wal_bytes", "retention_held_back_ms"}
        self._state = state

    def collect(self) -> Iterator[Metric]:
        c = self._counters
        yield _labelled(
            "meshelect_gateway_batches",
            "Batches received from leaders, by transport and outcome.",
            ["transport", "status"],
            c.batches.items(),
        )
        yield _labelled(
            "meshelect_gateway_frames_dropped",
            "Frames dropped before ingest (bad tag, replay, oversized, malformed...).",
            ["transport", "reason"],
            c.frames_dropped.items(),
        )
        for name, documentation, attribute in _PLAIN_COUNTERS:
            yield _counter(name, documentation, getattr(c, attribute))
        yield _labelled(
            "meshelect_gateway_storage_errors",
            "Storage operations that failed (full disk, I/O error), by task; all are retried.",
            ["task"],
            [((task,), value) for task, value in c.storage_errors.items()],
        )
        state = self._state() if self._state is not None else {}
        degraded = GaugeMetricFamily(
            "meshelect_gateway_degraded",
            "1 while the gateway is degraded, by reason (storage: the database fails).",
            labels=["reason"],
        )
        degraded.add_metric(["storage"], 1 if state.get("degraded") else 0)
        yield degraded
        yield _gauge(
            "meshelect_gateway_held_changes",
            "Alerts/elections waiting for the storage to take them.",
            state.get("held_changes", 0),
        )
        yield _gauge(
            "meshelect_gateway_wal_bytes",
            "Size of the SQLite write-ahead log file.",
            state.get("wal_bytes", 0),
        )
        yield _gauge(
            "meshelect_gateway_retention_held_back_seconds",
            "How far raw-reading retention lags the wall clock (after a clock step or restart).",
            state.get("retention_held_back_ms", 0) / 1000,
        )
        rate = GaugeMetricFamily(
            "meshelect_gateway_ingest_rate_readings_per_second",
            "Readings stored per second, averaged over the last 10 s.",
        )
        rate.add_metric([], c.ingest_rate(self._clock()))
        yield rate
        clients = GaugeMetricFamily(
            "meshelect_gateway_sse_clients", "Connected live-feed (SSE) clients."
        )
        clients.add_metric([], c.sse_clients)
        yield clients
        term = GaugeMetricFamily(
            "meshelect_mesh_term", "Highest term seen for the mesh.", labels=["mesh"]
        )
        leader = GaugeMetricFamily(
            "meshelect_mesh_leader_info",
            "The mesh's current leader (value 1; the leader is a label).",
            labels=["mesh", "leader"],
        )
        members = GaugeMetricFamily(
            "meshelect_mesh_members", "Members the leader reports.", labels=["mesh"]
        )
        resets = GaugeMetricFamily(
            "meshelect_mesh_fence_resets",
            "Operator fence resets recorded for the mesh.",
            labels=["mesh"],
        )
        for mesh in self._meshes():
            term.add_metric([mesh["name"]], mesh["term"])
            if mesh["leader"]:
                leader.add_metric([mesh["name"], mesh["leader"]], 1)
            members.add_metric([mesh["name"]], len(mesh["members"]))
            resets.add_metric([mesh["name"]], mesh.get("fence_resets", 0))
        yield term
        yield leader
        yield members
        yield resets


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _labelled(
    name: str, documentation: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values):
        family.add_metric(list(key), value)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class MetricsRenderer:
    """Builds the ``/metrics`` body from the live counters and mesh states."""

    def __init__(self, counters: Counters, meshes: Any, clock: Any, state: Any = None) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_GatewayCollector(counters, meshes, clock, state))

    def render(self) -> bytes:
        return generate_latest(self._registry)
