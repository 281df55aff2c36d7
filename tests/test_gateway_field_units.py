"""The gateway in the field, piece by piece: retention against clock steps, the fencing rule,
operator fence resets, and the ingest path on a database that refuses writes.

A failing database here is SQLite's own: ``PRAGMA max_page_count`` makes every write that
needs a new page fail with SQLITE_FULL ("database or disk is full"), the error a full disk
gives (small writes that fit a page's free space still succeed, as on a nearly full disk), and
``PRAGMA query_only`` makes every write fail. The same on a real full tmpfs, with real agents,
is in tests/test_gateway_disk_full.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import fence
from gateway.health import RECOVER_TICKS
from gateway.ingest import ACK_FENCED, ACK_OK, ACK_REJECTED, Ingest
from gateway.metrics import Counters, MetricsRenderer
from gateway.retention import STEP_TOLERANCE_MS, Retention
from gateway.storage import MIGRATIONS, SqliteStorage, StorageError
from gateway.tracker import Tracker, TrackerConfig
from gateway.upkeep import Upkeep

DAY = 86_400_000
HOUR = 3_600_000
WALL0 = 1_800_000_000_000


def batch(leader: str, batch_id: int, seqs: range, members: list[str] | None = None) -> Any:
    return {
        "id": batch_id,
        "mesh": "m",
        "leader": leader,
        "readings": [[leader, 1, s, 1000 * s, {"t": s}] for s in seqs],
        "members": [[n, 900, 900, 900, 0, 0] for n in (members or [leader])],
    }


# ------------------------------------------------------------------------------ retention


def test_a_forward_step_moves_retention_only_as_far_as_observed_time() -> None:
    retention = Retention(7 * DAY, 365 * DAY, every_ms=600_000)
    retention.start((None, None), WALL0, 0)
    assert retention.references(WALL0, 0) == (WALL0, WALL0)
    # One hour passes on both clocks: no step, the reference follows the wall clock.
    assert retention.observe(WALL0 + HOUR, HOUR) is None
    assert retention.references(WALL0 + HOUR, HOUR)[0] == WALL0 + HOUR
    # The wall clock jumps 8 days ahead between two ticks, one second apart.
    stepped = WALL0 + HOUR + 8 * DAY + 1000
    assert retention.observe(stepped, HOUR + 1000) == 8 * DAY
    assert retention.steps == 1
    raw, agg = retention.references(stepped, HOUR + 1000)
    assert raw == agg == WALL0 + HOUR + 1000  # one observed second later, not 8 days
    assert retention.held_back_ms(stepped, HOUR + 1000) == 8 * DAY
    # A day later (observed): the reference has moved one day, no more.
    assert retention.references(stepped + DAY, HOUR + 1000 + DAY)[0] == WALL0 + HOUR + 1000 + DAY
    # After a whole raw period without a further step the raw reference takes the wall clock
    # again (every row from before the step is older than 7 days in observed time by then);
    # aggregates, kept a year, still wait.
    later_mono = HOUR + 1000 + 7 * DAY
    raw, agg = retention.references(stepped + 7 * DAY, later_mono)
    assert raw == stepped + 7 * DAY
    assert agg == WALL0 + HOUR + 1000 + 7 * DAY


def test_a_backward_step_follows_the_wall_clock() -> None:
    retention = Retention(7 * DAY, 365 * DAY, every_ms=600_000)
    retention.start((None, None), WALL0, 0)
    assert retention.observe(WALL0 - DAY, 1000) == -DAY - 1000
    assert retention.references(WALL0 - DAY, 1000)[0] == WALL0 - DAY


def test_small_disagreements_are_not_steps() -> None:
    retention = Retention(7 * DAY, 365 * DAY, every_ms=600_000)
    retention.start((None, None), WALL0, 0)
    assert retention.observe(WALL0 + 1000 + STEP_TOLERANCE_MS, 1000) is None
    assert retention.steps == 0


def test_after_a_restart_downtime_is_not_counted() -> None:
    """The gateway cannot tell downtime from a step: it goes on from its saved reference."""
    retention = Retention(7 * DAY, 365 * DAY, every_ms=600_000)
    saved = WALL0
    retention.start((saved, saved), WALL0 + 8 * DAY, 5)  # back 8 days later, or stepped
    assert retention.references(WALL0 + 8 * DAY, 5) == (saved, saved)
    assert retention.references(WALL0 + 8 * DAY + HOUR, 5 + HOUR)[0] == saved + HOUR
    # A wall clock behind the saved reference is taken as it is.
    behind = Retention(7 * DAY, 365 * DAY, every_ms=600_000)
    behind.start((saved, saved), saved - DAY, 0)
    assert behind.references(saved - DAY, 0)[0] == saved - DAY


def test_purge_schedule_retries_sooner_after_a_failure() -> None:
    retention = Retention(7 * DAY, 365 * DAY, every_ms=600_000)
    retention.start((None, None), WALL0, 0)
    assert retention.due(0)
    retention.done(0, ok=False)
    assert not retention.due(9_999) and retention.due(10_000)
    retention.done(10_000, ok=True)
    assert not retention.due(609_999) and retention.due(610_000)


def test_a_stepped_purge_deletes_nothing_early(tmp_path: Path) -> None:
    """Rows in a real database, a purge after an 8-day step, then a restart still stepped."""
    path = str(tmp_path / "gw.db")
    counters = Counters()
    ingest = Ingest(SqliteStorage(path), Tracker(), counters)
    assert ingest.receive("t", "m", "a", 1, batch("a", 1, range(1, 11)), WALL0).status == ACK_OK
    upkeep = Upkeep(ingest.storage, Retention(7 * DAY, 365 * DAY, 600_000), ingest.health, counters)
    upkeep.start(WALL0, 0)
    upkeep.tick(WALL0 + 1000, 1000)  # first purge: nothing is old
    assert upkeep.observe(WALL0 + 2000 + 8 * DAY, 2000) == 8 * DAY  # stepped: seen, counted
    assert counters.clock_steps == 1
    upkeep.retention.done(2000, ok=False)  # make the next purge due at once
    upkeep.tick(WALL0 + 12_000 + 8 * DAY, 12_000)
    assert counters.purges == 2 and ingest.storage.reading_count() == 10
    assert ingest.health.problems()[0]["what"] == "clock"
    ingest.storage.close()
    # Restarted with the clock still 8 days ahead: the saved reference holds.
    again = SqliteStorage(path)
    restarted = Upkeep(again, Retention(7 * DAY, 365 * DAY, 600_000), ingest.health, counters)
    restarted.start(WALL0 + 9 * DAY, 0)
    restarted.tick(WALL0 + 9 * DAY + 1000, 1000)
    assert again.reading_count() == 10
    # Once 7 days have passed in observed time the rows go, as retention says.
    restarted.retention.done(1000, ok=False)
    restarted.tick(WALL0 + 16 * DAY + 20_000, 7 * DAY + 20_000)
    assert again.reading_count() == 0
    again.close()


def test_a_clock_step_is_not_taken_for_silence(tmp_path: Path) -> None:
    config = TrackerConfig(silent_ms=4000, no_leader_ms=10_000)
    ingest = Ingest(SqliteStorage(str(tmp_path / "gw.db")), Tracker(config), Counters())
    ingest.receive("t", "m", "a", 1, batch("a", 1, range(1, 2), ["a", "b"]), WALL0)
    assert ingest.tick(WALL0 + 1000) == []
    ingest.tracker.shift(8 * DAY)  # what the gateway does when it sees the wall clock step
    assert ingest.tick(WALL0 + 8 * DAY + 2000) == []
    member = ingest.mesh_state("m")["members"][1]
    assert member["last_seen_ms"] == WALL0 + 8 * DAY  # an age that is still right
    # Real silence is still noticed, in the new clock.
    raised = [e["kind"] for e in ingest.tick(WALL0 + 8 * DAY + 11_000) if e["type"] == "alert"]
    assert raised == ["no_leader"]


# ------------------------------------------------------------------------------ fencing


def test_fence_rule() -> None:
    never: Any = lambda: False  # noqa: E731
    seen: Any = lambda: True  # noqa: E731
    assert fence.decide(None, fence.MAX_TERM, never) == fence.ACCEPT  # first contact
    assert fence.decide(5, 4, seen) == fence.FENCED
    assert fence.decide(5, 5 + fence.STEP, never) == fence.ACCEPT
    assert fence.decide(5, 6 + fence.STEP, never) == fence.REFUSED
    assert fence.decide(5, fence.MAX_TERM, seen) == fence.ACCEPT
    assert fence.decide(5, fence.MAX_TERM + 1, seen) == fence.REFUSED
    assert fence.decide(None, -1, seen) == fence.REFUSED


def test_unknown_senders_cannot_jump_the_fence_known_ones_can(tmp_path: Path) -> None:
    path = str(tmp_path / "gw.db")
    ingest = Ingest(SqliteStorage(path), Tracker(), Counters())
    first = ingest.receive("t", "m", "a", 3, batch("a", 1, range(1, 4), ["a", "b"]), 1000)
    assert first.status == ACK_OK
    forged = ingest.receive("t", "m", "evil", fence.MAX_TERM, batch("evil", 1, range(1, 4)), 1100)
    assert (forged.status, forged.highest_term, forged.reason) == (ACK_REJECTED, 3, "term_jump")
    assert [e["kind"] for e in ingest.storage.alerts("m", True, 10)] == ["term_jump"]
    assert ingest.counters.term_jumps_refused == 1
    # The real leader is not fenced; an unknown sender may step up a little.
    assert ingest.receive("t", "m", "a", 3, batch("a", 2, range(4, 6)), 1200).status == ACK_OK
    assert (
        ingest.receive("t", "m", "new", 3 + fence.STEP, batch("new", 1, range(1, 2)), 1300)[0] == 0
    )
    # b was in a's member view: known, so it may raise the fence freely.
    assert ingest.receive("t", "m", "b", 100, batch("b", 1, range(1, 2)), 1400).status == ACK_OK
    assert ingest.receive("t", "m", "a", 3, batch("a", 3, range(6, 7)), 1500).status == ACK_FENCED
    ingest.storage.close()
    # After a restart the same: the knowledge lives in the database.
    again = Ingest(SqliteStorage(path), Tracker(), Counters())
    again.restore()
    jump = again.receive("t", "m", "evil", fence.MAX_TERM, batch("evil", 2, range(1, 4)), 2000)
    assert jump.status == ACK_REJECTED
    assert again.receive("t", "m", "b", 100, batch("b", 2, range(2, 3)), 2100).status == ACK_OK
    assert again.storage.reading_count() == 3 + 2 + 1 + 1 + 1  # nothing of evil's


def test_fence_reset_is_recorded_and_reaches_the_live_view(tmp_path: Path) -> None:
    path = str(tmp_path / "gw.db")
    ingest = Ingest(SqliteStorage(path), Tracker(), Counters())
    ingest.receive("t", "m", "a", 5, batch("a", 1, range(1, 2), ["a", "b"]), 1000)
    ingest.receive("t", "m", "b", fence.MAX_TERM, batch("b", 1, range(1, 2)), 1100)
    assert ingest.receive("t", "m", "a", 5, batch("a", 2, range(2, 3)), 1200).status == ACK_FENCED
    # The reset comes from another process (the CLI) through the database.
    other = SqliteStorage(path)
    assert other.reset_fence("nope", 0, "cli", 1300) is None
    record = other.reset_fence("m", 0, "cli", 1300)
    assert record is not None and (record["from_term"], record["to_term"]) == (fence.MAX_TERM, 0)
    other.close()
    events = ingest.poll_fence_resets(1400)
    assert [e["type"] for e in events] == ["fence_reset", "mesh"]
    assert events[1]["mesh"]["fence_reset"]["source"] == "cli"
    assert ingest.poll_fence_resets(1500) == []  # applied once
    assert ingest.receive("t", "m", "a", 5, batch("a", 3, range(3, 4)), 1600).status == ACK_OK
    assert ingest.mesh_state("m")["term"] == 5
    with pytest.raises(ValueError, match="term must be between"):
        ingest.storage.reset_fence("m", fence.MAX_TERM + 1, "api", 1700)


def test_old_databases_gain_the_fence_reset_table(tmp_path: Path, monkeypatch: Any) -> None:
    import gateway.storage as storage_module

    path = str(tmp_path / "gw.db")
    monkeypatch.setattr(storage_module, "MIGRATIONS", MIGRATIONS[:1])
    SqliteStorage(path).close()
    monkeypatch.setattr(storage_module, "MIGRATIONS", MIGRATIONS)
    upgraded = SqliteStorage(path)
    assert upgraded.schema_version == len(MIGRATIONS)
    assert upgraded.fence_resets(None, 0, 10) == []
    upgraded.close()


# ------------------------------------------------------------------------- a full database


def fill_up(storage: SqliteStorage) -> None:
    """Let the database grow no more: writes needing a new page fail with SQLITE_FULL."""
    pages = storage._db.execute("PRAGMA page_count").fetchone()[0]
    storage._db.execute("PRAGMA max_page_count = %d" % pages)


def make_room(storage: SqliteStorage) -> None:
    storage._db.execute("PRAGMA max_page_count = 1073741823")


def refuse_writes(storage: SqliteStorage, refuse: bool = True) -> None:
    storage._db.execute("PRAGMA query_only = %d" % refuse)


def test_a_full_database_acknowledges_nothing_and_holds_alerts(tmp_path: Path) -> None:
    config = TrackerConfig(silent_ms=4000, no_leader_ms=60_000)
    counters = Counters()
    storage = SqliteStorage(str(tmp_path / "gw.db"))
    ingest = Ingest(storage, Tracker(config), counters)
    upkeep = Upkeep(storage, Retention(7 * DAY, 365 * DAY, 600_000), ingest.health, counters)
    upkeep.start(WALL0, 0)
    ok = ingest.receive("t", "m", "a", 1, batch("a", 1, range(1, 6), ["a", "b"]), WALL0)
    assert ok.status == ACK_OK
    refuse_writes(storage)
    seq = 6
    now = WALL0
    for step in range(1, 8):  # b falls silent while the database refuses every batch
        now = WALL0 + 1000 * step
        result = ingest.receive("t", "m", "a", 1, batch("a", 1 + step, range(seq, seq + 200)), now)
        seq += 200
        assert (result.status, result.reason) == (ACK_REJECTED, "storage")
        events = ingest.tick(now) + ingest.flush(now)
        upkeep.tick(now, 1000 * step)
        ingest.health.tick(now)
    assert ingest.health.degraded and ingest.health.problems()[0]["what"] == "storage"
    assert "readonly" in ingest.health.problems()[0]["error"]
    # The silent alert was raised (live view, counters) though it could not be stored.
    assert [(a["kind"], a["node"]) for a in ingest.mesh_state("m")["alerts"]] == [
        ("node_silent", "b")
    ]
    assert counters.alerts_raised == 1 and storage.alerts("m", True, 10) == []
    assert len(ingest.held) == 1 and counters.storage_errors["ingest"] == 7
    assert storage.reading_count() == 5
    text = MetricsRenderer(counters, ingest.mesh_states, lambda: now).render().decode()
    assert 'meshelect_gateway_storage_errors_total{task="ingest"} 7.0' in text

    refuse_writes(storage, False)
    result = ingest.receive("t", "m", "a", 1, batch("a", 99, range(6, 36)), now + 100)
    assert result.status == ACK_OK
    events = ingest.flush(now + 200)
    assert [(e["type"], e["kind"], e["id"] is not None) for e in events] == [
        ("alert", "node_silent", True)
    ]
    assert [a["kind"] for a in storage.alerts("m", True, 10)] == ["node_silent"]
    for tick in range(RECOVER_TICKS):
        assert ingest.health.degraded
        upkeep.tick(now + 1000 * (tick + 1), 8000 + 1000 * tick)  # probes, checkpoints
        ingest.health.tick(now + 1000 * (tick + 1))
    assert not ingest.health.degraded and ingest.health.problems() == []
    assert storage.reading_count() == 35


def test_a_held_raise_and_clear_are_stored_in_order(tmp_path: Path) -> None:
    config = TrackerConfig(silent_ms=1000, no_leader_ms=60_000)
    storage = SqliteStorage(str(tmp_path / "gw.db"))
    ingest = Ingest(storage, Tracker(config), Counters())
    ingest.receive("t", "m", "a", 1, batch("a", 1, range(1, 2), ["a", "b"]), WALL0)
    refuse_writes(storage)
    only_a = ingest.receive("t", "m", "a", 1, batch("a", 2, range(2, 3)), WALL0 + 4500)
    assert only_a.reason == "storage"  # not stored, yet the live view heard a
    raised = [e for e in ingest.tick(WALL0 + 5000) if e["type"] == "alert"]
    assert [(e["kind"], e["node"], e["id"]) for e in raised] == [("node_silent", "b", None)]
    back = ingest.receive("t", "m", "a", 1, batch("a", 3, range(2, 3), ["a", "b"]), WALL0 + 6000)
    assert back.reason == "storage"  # the batch is not stored, but b is heard again: cleared
    assert len(ingest.held) == 2
    refuse_writes(storage, False)
    assert ingest.flush(WALL0 + 7000) == []  # already cleared: no second alert event
    rows = storage.alerts("m", False, 10)
    assert [(r["kind"], r["raised_ms"], r["cleared_ms"]) for r in rows] == [
        ("node_silent", WALL0 + 5000, WALL0 + 6000)
    ]


def test_storage_errors_never_leave_a_transaction_open(tmp_path: Path) -> None:
    storage = SqliteStorage(str(tmp_path / "gw.db"))
    ingest = Ingest(storage, Tracker(), Counters())
    ingest.receive("t", "m", "a", 1, batch("a", 1, range(1, 2)), WALL0)
    fill_up(storage)
    with pytest.raises(StorageError, match="full"):
        storage.ingest(1, ingest_batch(range(2, 250)), WALL0)
    assert not storage._db.in_transaction
    make_room(storage)
    refuse_writes(storage)
    with pytest.raises(StorageError, match="readonly"):
        storage.purge(WALL0 + 30 * DAY)
    assert not storage._db.in_transaction
    refuse_writes(storage, False)
    assert storage.purge(WALL0) == (0, 0, 0, 0)
    with sqlite3.connect(str(tmp_path / "gw.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1


def ingest_batch(seqs: range) -> Any:
    from gateway.batch import parse_batch

    return parse_batch(batch("a", 7, seqs), "m", "a")
