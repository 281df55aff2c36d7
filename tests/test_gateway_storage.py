"""The storage contract: group commit, fencing and dedup inside it, retention of the history
tables. Each test runs on every backend the machine can run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED
from gateway.batch import Batch, Reading, parse_batch
from gateway.ingest import Arrival, Ingest
from gateway.metrics import Counters
from gateway.storage import IngestOutcome, SqliteStorage, Storage
from gateway.tracker import Tracker
from testkit.postgres import PostgresServer
from testkit.postgres import available as postgres_available
from tests.test_gateway_ingest import make_batch


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.skip("no PostgreSQL server installed (apt-get install postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store: Storage
    if request.param == "sqlite":
        store = SqliteStorage(
            str(tmp_path / "gw.db"), raw_retention_ms=1000, aggregate_retention_ms=5000
        )
    else:
        from gateway.pgstorage import PostgresStorage

        server = request.getfixturevalue("postgres")
        store = PostgresStorage(
            server.new_database(), raw_retention_ms=1000, aggregate_retention_ms=5000
        )
    yield store
    store.close()


def batch(leader: str, batch_id: int, seqs: range, mesh: str = "m") -> Batch:
    return parse_batch(
        make_batch(mesh, leader, batch_id, [(leader, 1, s) for s in seqs]), mesh, leader
    )


def test_group_commit_fences_and_dedups_each_batch_in_order(storage: Storage) -> None:
    results = storage.ingest_many(
        [
            (2, batch("a", 1, range(0, 10))),
            (2, batch("a", 2, range(5, 15))),  # half of it is in the batch before
            (1, batch("b", 1, range(0, 3))),  # below the fence the first batch set
            (2, batch("a", 1, range(0, 10))),  # the first batch resent
            (3, batch("c", 1, range(0, 4), mesh="other")),
        ],
        1000,
    )
    assert [r.status for r in results if isinstance(r, IngestOutcome)] == [
        ACK_OK,
        ACK_OK,
        ACK_FENCED,
        ACK_OK,
        ACK_OK,
    ]
    assert [(r.inserted, r.duplicates, r.new_batch) for r in results] == [  # type: ignore[union-attr]
        (10, 0, True),
        (5, 5, True),
        (0, 0, False),
        (0, 10, False),
        (4, 0, True),
    ]
    assert storage.reading_count() == 19
    assert {m["name"]: m["term"] for m in storage.meshes()} == {"m": 2, "other": 3}


def test_a_batch_that_fails_does_not_spoil_its_group(storage: Storage) -> None:
    good = batch("a", 1, range(0, 5))
    broken = good._replace(
        batch_id=2,
        readings=[Reading("a", 1, 99, 0, {"temp": {1, 2}})],  # type: ignore[dict-item]
    )
    results = storage.ingest_many([(1, good), (1, broken), (1, batch("a", 3, range(5, 8)))], 1000)
    assert isinstance(results[1], TypeError)  # a set is no JSON: rolled back alone
    assert [r.inserted for r in (results[0], results[2])] == [5, 3]  # type: ignore[union-attr]
    assert storage.reading_count() == 8
    with pytest.raises(TypeError):
        storage.ingest(1, broken, 1000)


def test_ingest_receive_many_answers_each_batch(storage: Storage) -> None:
    ingest = Ingest(storage, Tracker(), Counters())
    arrivals = [
        Arrival("t", "m", "a", 1, make_batch("m", "a", 1, [("a", 1, 1)])),
        Arrival("t", "m", "a", 1, {"id": 7, "readings": "nonsense"}),
        Arrival("t", "m", "a", 1, make_batch("m", "a", 2, [("a", 1, 1), ("a", 1, 2)])),
    ]
    results = ingest.receive_many(arrivals, 1000)
    assert [(r.status, r.batch_id) for r in results] == [
        (ACK_OK, 1),
        (ACK_REJECTED, 7),
        (ACK_OK, 2),
    ]
    assert results[1].reason.startswith("batch_")
    assert storage.reading_count() == 2
    assert ingest.counters.dedup_hits == 1


def test_retention_of_elections_and_alerts(storage: Storage) -> None:
    for term, at in ((1, 1000), (2, 2000), (3, 3000)):
        assert storage.add_election("m", term, "a", "vote", at)
    storage.add_election("quiet", 1, "q", "vote", 1000)
    old = storage.raise_alert("m", "node_silent", "b", "b is silent", 1000)
    assert old["new"]
    assert storage.clear_alert(old["id"], 1500) is True
    assert storage.clear_alert(old["id"], 1600) is False  # cleared already
    open_alert = storage.raise_alert("m", "no_leader", "", "no leader", 1000)
    late = storage.raise_alert("m", "node_silent", "c", "c is silent", 1000)
    storage.clear_alert(late["id"], 9000)
    # History older than 5 s goes, but each mesh keeps its newest election and open alerts stay.
    purged = storage.purge(9000)
    assert (purged.elections, purged.alerts) == (2, 1)
    assert [(e["mesh"], e["term"]) for e in storage.elections(None, 10)] == [
        ("m", 3),
        ("quiet", 1),
    ]
    assert sorted(a["id"] for a in storage.alerts(None, False, 10)) == sorted(
        [open_alert["id"], late["id"]]
    )
    assert storage.purge(9000) == (0, 0, 0, 0)


def test_reused_ids_with_other_content_are_stored_apart_once(storage: Storage) -> None:
    """A wiped node's new readings under old (boot, seq) ids are kept apart, not dropped."""
    first = storage.ingest(2, batch("a", 1, range(0, 5)), 1000)
    assert (first.inserted, first.reused) == (5, 0)
    body = make_batch("m", "a", 2, [("a", 1, s) for s in (1, 2, 7)])
    body["readings"] = [[n, b, s, t + 9, {"temp": 5}] for n, b, s, t, _ in body["readings"]]
    wiped = storage.ingest(2, parse_batch(body, "m", "a"), 1100)
    assert (wiped.inserted, wiped.reused, wiped.duplicates) == (1, 2, 0)
    assert wiped.reused_nodes == ("a",)
    again = storage.ingest(2, parse_batch(dict(body, id=3), "m", "a"), 1200)
    assert (again.inserted, again.reused, again.duplicates) == (0, 0, 3)
    apart = storage.reused_readings("m", "a", 10)
    assert [(r["seq"], r["metrics"]) for r in apart] == [(1, {"temp": 5}), (2, {"temp": 5})]
    assert storage.reading_count() == 6
