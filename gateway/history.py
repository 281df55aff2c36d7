"""The recent past that the live feed's snapshot carries, so the dashboard draws at once.

A page that opens (or reconnects) gets the newest readings and aggregates of the last
``HISTORY_MS`` of every mesh inside its first event, instead of asking for them afterwards: the
charts appear as soon as plotly.js is ready, with no empty panels meanwhile. The amounts are
bounded for the whole snapshot (shared by the meshes) and match what the page keeps anyway
(600 points per chart trace).

Rows are compact lists, in the shape of the live feed's ``batch`` events plus the time the
gateway received them: readings ``[node, boot, seq, t_ms, received_ms, {metric: value}]``,
aggregates ``[leader, node, metric, count, min, max, mean, received_ms]``.
"""

from __future__ import annotations

from typing import Any

from gateway.storage import Storage

HISTORY_MS = 15 * 60_000
MAX_READINGS = 4000  # in one snapshot, all meshes together (about 70 bytes each as JSON)
MAX_AGGREGATES = 2000
MIN_PER_MESH = 200  # even with many meshes, each gets a chart's worth
_FAR_FUTURE_MS = 2**62
_AGGREGATE_FIELDS = ("leader", "node", "metric", "count", "min", "max", "mean", "received_ms")


def recent(storage: Storage, meshes: list[str], now_ms: int) -> dict[str, dict[str, Any]]:
    """mesh -> {"readings": [...], "aggregates": [...]}, oldest first (worker thread)."""
    since = max(0, now_ms - HISTORY_MS)
    share = max(1, len(meshes))
    out: dict[str, dict[str, Any]] = {}
    for mesh in meshes:
        readings = storage.readings(
            mesh, None, since, _FAR_FUTURE_MS, max(MIN_PER_MESH, MAX_READINGS // share)
        )
        aggregates = storage.aggregates(
            mesh, since, _FAR_FUTURE_MS, max(MIN_PER_MESH, MAX_AGGREGATES // share)
        )
        out[mesh] = {
            "readings": [
                [r["node"], r["boot"], r["seq"], r["t_ms"], r["received_ms"], r["metrics"]]
                for r in readings
            ],
            "aggregates": [[a[k] for k in _AGGREGATE_FIELDS] for a in aggregates],
        }
    return out
