"""The gateway drops a reading as a duplicate only when it is the same reading.

A node that lost its boot counter and had no valid clock reuses (boot, seq) ids: their
readings differ from the stored ones, so they are stored apart (``reading_conflicts``),
counted (``boot_reuse``) and alerted for that node; a true duplicate is still dropped. Sans-IO
ingest on a real SQLite file; the same with real processes is in tests/test_field_identity.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.core.messages import ACK_OK
from gateway.ingest import Ingest
from gateway.metrics import Counters, MetricsRenderer
from gateway.storage import SqliteStorage
from gateway.tracker import ALERT_BOOT_REUSE, Tracker
from tests.test_gateway_ingest import make_batch


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    return Ingest(SqliteStorage(str(tmp_path / "gw.db")), Tracker(), Counters())


def with_values(body: dict[str, Any], offset: int) -> dict[str, Any]:
    """The same ids, other readings (as a wiped node's new boot 1 would send them)."""
    body = dict(body)
    body["readings"] = [[n, b, s, t + offset, {"temp": 1}] for n, b, s, t, _ in body["readings"]]
    return body


def test_reused_ids_with_other_content_are_stored_apart_counted_and_alerted(
    ingest: Ingest,
) -> None:
    first = make_batch("m", "a", 1, [("b", 1, s) for s in range(1, 6)], [["a", 9, 9, 9, 1, 0]])
    assert ingest.receive("test", "m", "a", 3, first, 1000).status == ACK_OK
    # A true duplicate (a resend of the same readings) is still dropped.
    again = ingest.receive("test", "m", "a", 3, dict(first, id=2), 1100)
    assert again.status == ACK_OK and ingest.counters.dedup_hits == 5
    # "b" was wiped: its new boot 1 reuses seqs 1..3 with other readings, and seq 6 is new.
    wiped = with_values(make_batch("m", "a", 3, [("b", 1, s) for s in (1, 2, 3, 6)]), 7)
    result = ingest.receive("test", "m", "a", 3, wiped, 2000)
    assert result.status == ACK_OK
    assert ingest.storage.reading_count() == 6
    apart = ingest.storage.reused_readings("m", "b", 100)
    assert [(r["boot"], r["seq"], r["t_ms"]) for r in apart] == [
        (1, 1, 1007),
        (1, 2, 2007),
        (1, 3, 3007),
    ]
    assert ingest.counters.boot_reuse == 3 and ingest.counters.dedup_hits == 5
    assert ingest.counters.readings_stored == 5 + 1 + 3
    alerts = [a for a in ingest.storage.alerts("m", True, 10) if a["kind"] == ALERT_BOOT_REUSE]
    assert [a["node"] for a in alerts] == ["b"]
    assert any(e["type"] == "alert" and e["kind"] == ALERT_BOOT_REUSE for e in result.events)
    # A resend of the reused readings is a duplicate now, stored once; one alert per node.
    resend = ingest.receive("test", "m", "a", 3, dict(wiped, id=4), 2100)
    assert resend.status == ACK_OK
    assert ingest.counters.boot_reuse == 3 and ingest.counters.dedup_hits == 5 + 4
    assert len(ingest.storage.reused_readings("m", None, 100)) == 3
    assert len(ingest.storage.alerts("m", True, 10)) == len(alerts)
    text = MetricsRenderer(ingest.counters, ingest.mesh_states, lambda: 1000).render().decode()
    assert "meshelect_gateway_boot_reuse_total 3.0" in text


def test_retention_purges_readings_stored_apart_too(ingest: Ingest) -> None:
    first = make_batch("m", "a", 1, [("b", 1, 1)])
    ingest.receive("test", "m", "a", 3, first, 1000)
    ingest.receive("test", "m", "a", 3, with_values(dict(first, id=2), 5), 1000)
    assert len(ingest.storage.reused_readings("m", None, 10)) == 1
    assert isinstance(ingest.storage, SqliteStorage)
    ingest.purge(1000 + ingest.storage.raw_retention_ms + 1)
    assert ingest.storage.reused_readings("m", None, 10) == []
