"""Sans-IO ingest: fencing, dedup, elections and alerts, on a real SQLite file (no network)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.batchcheck import check_batch
from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED
from gateway.batch import BatchError, parse_batch
from gateway.ingest import Ingest
from gateway.metrics import Counters, MetricsRenderer
from gateway.storage import MIGRATIONS, SqliteStorage
from gateway.tracker import Tracker, TrackerConfig


def make_batch(
    mesh: str,
    leader: str,
    batch_id: int,
    rows: list[tuple[str, int, int]],
    members: list[list[Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": batch_id,
        "mesh": mesh,
        "leader": leader,
        "readings": [[n, b, s, 1000 * s, {"temp": 21000 + s}] for n, b, s in rows],
        "agg": [[leader, "temp", len(rows), 21000, 22000, 21500]] if rows else [],
        "members": members if members is not None else [[leader, 900, 900, 900, 1, 0]],
        "dropped": [],
        "elections": [],
    }
    body.update(extra)
    return body


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    storage = SqliteStorage(str(tmp_path / "gw.db"))
    return Ingest(storage, Tracker(), Counters())


def test_same_batch_twice_is_stored_once(ingest: Ingest) -> None:
    body = make_batch("m", "a", 1, [("a", 1, s) for s in range(10)])
    first = ingest.receive("test", "m", "a", 3, body, 1000)
    second = ingest.receive("test", "m", "a", 3, body, 1100)
    assert first.status == ACK_OK and second.status == ACK_OK
    assert ingest.storage.reading_count() == 10
    assert ingest.counters.dedup_hits == 10
    assert len(ingest.storage.aggregates("m", 0, 10**13, 100)) == 1


def test_lower_term_is_fenced_after_new_leader(ingest: Ingest) -> None:
    ingest.receive("test", "m", "a", 3, make_batch("m", "a", 1, [("a", 1, 1)]), 1000)
    result = ingest.receive("test", "m", "b", 4, make_batch("m", "b", 1, [("b", 1, 1)]), 2000)
    assert result.status == ACK_OK
    stale = ingest.receive("test", "m", "a", 3, make_batch("m", "a", 2, [("a", 1, 2)]), 2100)
    assert stale.status == ACK_FENCED and stale.highest_term == 4
    assert ingest.counters.fenced == 1
    assert ingest.storage.reading_count() == 2
    assert ingest.storage.meshes()[0]["leader"] == "b"


def test_fencing_survives_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "gw.db")
    first = Ingest(SqliteStorage(path), Tracker(), Counters())
    first.receive("test", "m", "b", 7, make_batch("m", "b", 1, [("b", 1, 1)]), 1000)
    first.storage.close()
    again = Ingest(SqliteStorage(path), Tracker(), Counters())
    again.restore()
    assert again.tracker.meshes["m"].leader == "b"
    result = again.receive("test", "m", "a", 6, make_batch("m", "a", 9, [("a", 1, 1)]), 2000)
    assert result.status == ACK_FENCED and result.highest_term == 7


def test_malformed_batches_are_rejected_and_counted(ingest: Ingest) -> None:
    for body in [None, 5, {"id": 1}, make_batch("m", "a", 1, [], readings=[["a", 1]])]:
        assert ingest.receive("test", "m", "a", 1, body, 1).status == ACK_REJECTED
    wrong_mesh = ingest.receive("test", "m", "a", 1, make_batch("x", "a", 1, []), 1)
    assert wrong_mesh.reason == "batch_mesh_mismatch"
    wrong_leader = ingest.receive("test", "m", "z", 1, make_batch("m", "a", 1, []), 1)
    assert wrong_leader.reason == "batch_leader_mismatch"
    assert ingest.storage.reading_count() == 0
    assert sum(ingest.counters.frames_dropped.values()) == 6


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("readings", [["a", 1, 1, 5, {"t": 1.5}]]),
        ("readings", [["a", -1, 1, 5, {}]]),
        ("readings", [["a", 1, True, 5, {}]]),
        ("readings", [["", 1, 1, 5, {}]]),
        ("readings", [["a", 1, 1, 5, {"t": 2**70}]]),
        ("members", [["a", 1, 1]]),
        ("elections", [[1, "a", 1.5]]),
        ("elections", [[1, "a", ""]]),
        ("dropped", "x"),
        # One past the bounds that the gateway's storage sets (SQLite's int64):
        ("id", 2**63),
        ("readings", [["a", 1, 1, 2**63, {}]]),
        ("agg", [["a", "t", 2**63, 0, 0, 0]]),
        ("members", [["a", 1, 1, 1, 1, 2**63]]),
        ("dropped", [["a", 2**63]]),
    ],
)
def test_parse_batch_refuses_bad_fields(field: str, value: Any) -> None:
    with pytest.raises(BatchError) as caught:
        parse_batch(make_batch("m", "a", 1, [], **{field: value}), "m", "a")
    assert caught.value.reason == field  # the schema names the bad key


# Batches at the schema's bounds (docs/wire.md, "The batch map"), written out here on their own.
U8, U16, U32 = (
    st.sampled_from([0, 0xFF]),
    st.sampled_from([0, 0xFFFF]),
    st.sampled_from([0, 2**32 - 1]),
)
U63 = st.sampled_from([0, 2**53, 2**63 - 1])  # "unsigned 64-bit" within SQLite's int64
I32 = st.sampled_from([-(2**31), 0, 2**31 - 1])
I64 = st.sampled_from([-(2**63), 0, 2**63 - 1])
NODE = st.sampled_from(["a", "x" * 16, "é" * 8])
NAME = st.sampled_from(["t", "x" * 32, "é" * 16])
METRICS = st.dictionaries(NAME, I64, max_size=3)
VALID_BODY = st.fixed_dictionaries(
    {
        "id": st.one_of(U63, NAME),
        "readings": st.lists(st.tuples(NODE, U32, U32, U63, METRICS).map(list), max_size=4),
    },
    optional={
        "mesh": st.just("m"),
        "leader": st.just("a"),
        "agg": st.lists(st.tuples(NODE, NAME, U63, I64, I64, I64).map(list), max_size=3),
        "members": st.lists(st.tuples(NODE, I32, U16, U16, U8, U63).map(list), max_size=3),
        "dropped": st.lists(st.tuples(NODE, U63).map(list), max_size=3),
        "elections": st.lists(
            st.tuples(U32, st.one_of(st.none(), NODE), st.one_of(NAME, U32)).map(list),
            max_size=3,
        ),
    },
)


@settings(max_examples=200, deadline=None)
@given(body=VALID_BODY)
def test_the_gateway_stores_every_batch_the_core_schema_accepts(body: dict[str, Any]) -> None:
    """One schema: a batch at its bounds passes ``check_batch``, and the gateway converts and
    stores it without a check of its own (its integers fit SQLite)."""
    assert check_batch(body) is None
    storage = SqliteStorage(":memory:")
    ingest = Ingest(storage, Tracker(), Counters())
    result = ingest.receive("test", "m", "a", 1, body, 1000)
    assert result.status == ACK_OK and result.reason == ""
    stored = {(node, boot, seq) for node, boot, seq, _, _ in body["readings"]}
    assert storage.reading_count() == len(stored)
    storage.close()


def test_elections_are_inferred_with_reasons(ingest: Ingest) -> None:
    def send(leader: str, term: int, now: int, members: list[list[Any]]) -> list[dict[str, Any]]:
        body = make_batch("m", leader, now, [], members=members)
        return ingest.receive("test", "m", leader, term, body, now).events

    healthy = [["a", 900, 900, 900, 0, 0], ["b", 800, 800, 800, 0, 0]]
    send("a", 1, 1000, healthy)
    # b takes over while a is present and healthy: a better score.
    send("b", 2, 20_000, healthy)
    # a hands over, flagged leaving.
    send("a", 3, 40_000, [["a", 900, 900, 900, 0, 0], ["b", 800, 800, 800, 16, 0]])
    # b takes over and a is gone: crash.
    send("b", 4, 60_000, [["b", 800, 800, 800, 0, 0]])
    # the leader reports a reason itself.
    body = make_batch("m", "c", 1, [], elections=[[5, "c", "merge"]])
    ingest.receive("test", "m", "c", 5, body, 80_000)
    reasons = [(e["term"], e["leader"], e["reason"]) for e in ingest.storage.elections("m", 10)]
    assert reasons == [
        (1, "a", "first seen"),
        (2, "b", "score"),
        (3, "a", "handoff"),
        (4, "b", "crash"),
        (5, "c", "partition merge"),
    ]
    assert ingest.counters.elections == 5


def test_two_leaders_at_once_then_merge(ingest: Ingest) -> None:
    members = [["a", 900, 900, 900, 0, 0], ["b", 800, 800, 800, 0, 0]]
    for now in (1000, 2000):
        ingest.receive("test", "m", "a", 2, make_batch("m", "a", now, [], members=members), now)
        later = now + 500
        events = ingest.receive(
            "test", "m", "b", 2, make_batch("m", "b", later, [], members=members), later
        ).events
    kinds = [e["kind"] for e in ingest.storage.alerts("m", True, 10)]
    assert kinds == ["two_leaders"]
    assert (
        any(
            e["type"] == "alert"
            for e in ingest.receive(
                "test", "m", "a", 2, make_batch("m", "a", 9, [], members=members), 2600
            ).events
        )
        is False
    )  # already raised: not raised twice
    events = ingest.receive(
        "test", "m", "c", 3, make_batch("m", "c", 1, [], members=members), 3000
    ).events
    election = [e for e in events if e["type"] == "election"]
    assert election[0]["reason"] == "partition merge"
    # Quiet for longer than the window: the alert clears.
    cleared = [e for e in ingest.tick(3000 + 3001) if e["type"] == "alert_cleared"]
    assert [e["kind"] for e in cleared] == ["two_leaders"]
    assert ingest.storage.alerts("m", True, 10) == []


def test_clean_failover_is_not_split_brain(ingest: Ingest) -> None:
    for now in (1000, 2000):
        ingest.receive("test", "m", "a", 1, make_batch("m", "a", now, []), now)
    for now in (2500, 3500):
        ingest.receive("test", "m", "b", 2, make_batch("m", "b", now, []), now)
    assert ingest.storage.alerts("m", True, 10) == []


def test_alerts_battery_silence_drops_and_no_leader(tmp_path: Path) -> None:
    config = TrackerConfig(no_leader_ms=5000, silent_ms=4000, drop_alert_ms=10_000)
    ingest = Ingest(SqliteStorage(str(tmp_path / "gw.db")), Tracker(config), Counters())
    members = [["a", 900, 900, 900, 1, 0], ["b", 100, 150, 700, 8, 0]]
    body = make_batch("m", "a", 1, [], members=members, dropped=[["b", 5]])
    events = ingest.receive("test", "m", "a", 1, body, 1000).events
    raised = sorted((e["kind"], e["node"]) for e in events if e["type"] == "alert")
    assert raised == [("low_battery", "b"), ("readings_dropped", "b")]
    assert ingest.counters.lost_readings == 5
    # The counter is a running total: 5 -> 8 loses 3 more.
    body = make_batch("m", "a", 2, [], members=members, dropped=[["b", 8]])
    ingest.receive("test", "m", "a", 1, body, 1500)
    assert ingest.counters.lost_readings == 8
    # b drops out of the leader's view: silent after silent_ms; a is still heard.
    only_a = make_batch("m", "a", 3, [], members=[["a", 900, 900, 900, 1, 0]])
    ingest.receive("test", "m", "a", 1, only_a, 4500)
    kinds = sorted((e["kind"], e["node"]) for e in ingest.tick(6000) if e["type"] == "alert")
    assert kinds == [("node_silent", "b")]
    # Then the leader falls silent too: no leader (and no flood of per-node alerts).
    kinds = sorted((e["kind"], e["node"]) for e in ingest.tick(9600) if e["type"] == "alert")
    assert kinds == [("no_leader", "")]
    back = [["a", 900, 900, 900, 1, 0], ["b", 900, 900, 700, 0, 0]]
    events = ingest.receive(
        "test", "m", "a", 1, make_batch("m", "a", 4, [], members=back), 10_000
    ).events
    cleared = sorted((e["kind"], e["node"]) for e in events if e["type"] == "alert_cleared")
    assert cleared == [("low_battery", "b"), ("no_leader", ""), ("node_silent", "b")]
    cleared = [e["kind"] for e in ingest.tick(12_000) if e["type"] == "alert_cleared"]
    assert cleared == ["readings_dropped"]
    assert ingest.storage.alerts("m", True, 10) == []
    assert len(ingest.storage.alerts("m", False, 10)) == 4


def test_concurrent_meshes_into_one_sqlite(tmp_path: Path) -> None:
    """Two gateway 'processes' (connections) write four meshes at once into one file."""
    path = str(tmp_path / "gw.db")
    SqliteStorage(path).close()
    errors: list[BaseException] = []

    def writer(meshes: list[str]) -> None:
        try:
            ingest = Ingest(SqliteStorage(path), Tracker(), Counters())
            for batch_id in range(40):
                for mesh in meshes:
                    rows = [("n%d" % i, 1, batch_id) for i in range(5)]
                    body = make_batch(mesh, "lead", batch_id, rows)
                    # Every batch twice, as a leader resending an unacknowledged batch would.
                    for _ in range(2):
                        result = ingest.receive("test", mesh, "lead", 1, body, batch_id)
                        assert result.status == ACK_OK
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(["m1", "m2"],)),
        threading.Thread(target=writer, args=(["m3", "m4"],)),
        threading.Thread(target=writer, args=(["m1", "m4"],)),  # overlaps: same readings again
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = sqlite3.connect(path)
    per_mesh = dict(db.execute("SELECT mesh, COUNT(*) FROM readings GROUP BY mesh").fetchall())
    assert per_mesh == {"m1": 200, "m2": 200, "m3": 200, "m4": 200}


def test_schema_version_and_retention(tmp_path: Path) -> None:
    storage = SqliteStorage(
        str(tmp_path / "gw.db"), raw_retention_ms=1000, aggregate_retention_ms=5000
    )
    assert storage.schema_version == len(MIGRATIONS)
    ingest = Ingest(storage, Tracker(), Counters())
    ingest.receive("test", "m", "a", 1, make_batch("m", "a", 1, [("a", 1, 1), ("a", 1, 2)]), 10_000)
    assert storage.purge(10_500) == (0, 0, 0, 0)
    assert storage.purge(11_001) == (2, 0, 0, 0)  # raw readings expire first...
    assert storage.purge(15_001) == (0, 1, 0, 0)  # ...aggregates are kept longer
    assert storage.next_boot() == 1 and storage.next_boot() == 2


def test_metrics_text_names(ingest: Ingest) -> None:
    ingest.receive("test", "m", "a", 3, make_batch("m", "a", 1, [("a", 1, 1)]), 1000)
    ingest.receive("test", "m", "a", 3, make_batch("m", "a", 1, [("a", 1, 1)]), 1000)
    text = MetricsRenderer(ingest.counters, ingest.mesh_states, lambda: 1000).render().decode()
    assert 'meshelect_gateway_batches_total{status="ok",transport="test"} 2.0' in text
    assert "meshelect_gateway_dedup_hits_total 1.0" in text
    assert "meshelect_gateway_readings_stored_total 1.0" in text
    assert 'meshelect_mesh_term{mesh="m"} 3.0' in text
    assert 'meshelect_mesh_leader_info{leader="a",mesh="m"} 1.0' in text


def test_long_gone_nodes_leave_the_live_view(tmp_path: Path) -> None:
    config = TrackerConfig(silent_ms=1000, forget_ms=5000, no_leader_ms=60_000)
    ingest = Ingest(SqliteStorage(str(tmp_path / "gw.db")), Tracker(config), Counters())
    both = [["a", 900, 900, 900, 1, 0], ["b", 900, 100, 900, 0, 0]]
    ingest.receive("test", "m", "a", 1, make_batch("m", "a", 1, [], members=both), 1000)
    for now in range(2000, 8000, 1000):  # a keeps leading; b is not heard any more
        body = make_batch("m", "a", now, [], members=[["a", 900, 900, 900, 1, 0]])
        ingest.receive("test", "m", "a", 1, body, now)
        ingest.tick(now + 500)
    assert [m["node"] for m in ingest.mesh_state("m")["members"]] == ["a"]
    assert ingest.storage.alerts("m", True, 10) == []  # b's silent + low-battery alerts cleared
    assert [n["node"] for n in ingest.storage.nodes("m")] == ["a", "b"]  # history kept
