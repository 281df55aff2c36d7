"""The gateway's counters, and their Prometheus text exposition (``/metrics``).

Counters are plain integers bumped by the ingest path (cheap, no locks: everything runs on the
event loop). At scrape time a prometheus_client collector turns them into metric families, so
names, ``_total`` suffixes, label escaping and the text format follow that ecosystem exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
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
        self.fenced = 0
        self.elections = 0
        self.lost_readings = 0
        self.alerts_raised = 0
        self.sse_clients = 0
        self._recent: deque[tuple[int, int]] = deque()  # (ms, readings stored)

    def count_batch(self, transport: str, status: int) -> None:
        """One batch answered with the BATCH_ACK ``status`` (agent.core.messages.ACK_*)."""
        key = (transport, _ACK_LABELS[status])
        self.batches[key] = self.batches.get(key, 0) + 1

    def count_drop(self, transport: str, reason: str) -> None:
        key = (transport, reason)
        self.frames_dropped[key] = self.frames_dropped.get(key, 0) + 1

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


class _GatewayCollector(Collector):
    def __init__(self, counters: Counters, meshes: Any, clock: Any) -> None:
        self._counters = counters
        self._meshes = meshes  # callable -> list of {"name", "term", "leader", "members"}
        self._clock = clock  # callable -> now in ms

    def collect(self) -> Iterator[Metric]:
        c = self._counters
        batches = CounterMetricFamily(
            "meshelect_gateway_batches",
            "Batches received from leaders, by transport and outcome.",
            labels=["transport", "status"],
        )
        for (transport, status), value in sorted(c.batches.items()):
            batches.add_metric([transport, status], value)
        yield batches
        drops = CounterMetricFamily(
            "meshelect_gateway_frames_dropped",
            "Frames dropped before ingest (bad tag, replay, oversized, malformed...).",
            labels=["transport", "reason"],
        )
        for (transport, reason), value in sorted(c.frames_dropped.items()):
            drops.add_metric([transport, reason], value)
        yield drops
        yield _counter(
            "meshelect_gateway_readings_received",
            "Readings in accepted batches.",
            c.readings_received,
        )
        yield _counter(
            "meshelect_gateway_readings_stored",
            "Readings stored (first copies).",
            c.readings_stored,
        )
        yield _counter(
            "meshelect_gateway_dedup_hits", "Readings already stored (duplicates).", c.dedup_hits
        )
        yield _counter(
            "meshelect_gateway_fenced_batches", "Batches refused for a stale term.", c.fenced
        )
        yield _counter("meshelect_gateway_elections", "Elections recorded.", c.elections)
        yield _counter(
            "meshelect_gateway_lost_readings",
            "Readings members reported dropped because their buffer was full.",
            c.lost_readings,
        )
        yield _counter("meshelect_gateway_alerts_raised", "Alerts raised.", c.alerts_raised)
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
        for mesh in self._meshes():
            term.add_metric([mesh["name"]], mesh["term"])
            if mesh["leader"]:
                leader.add_metric([mesh["name"], mesh["leader"]], 1)
            members.add_metric([mesh["name"]], len(mesh["members"]))
        yield term
        yield leader
        yield members


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class MetricsRenderer:
    """Builds the ``/metrics`` body from the live counters and mesh states."""

    def __init__(self, counters: Counters, meshes: Any, clock: Any) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_GatewayCollector(counters, meshes, clock))

    def render(self) -> bytes:
        return generate_latest(self._registry)
