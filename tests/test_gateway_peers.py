"""A replica's live view from the other replicas' notes (gateway/peers.py), sans-IO: two
ingest paths on one database, the notes given by hand as gateway/pgnotify.py builds them.
The same on a real PostgreSQL with real processes: tests/test_gateway_replicas.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.core.messages import ACK_FENCED, ACK_OK
from gateway import pgnotify
from gateway.ingest import Ingest
from gateway.metrics import Counters
from gateway.peers import SYNC, Peers
from gateway.storage import SqliteStorage
from gateway.tracker import Tracker, TrackerConfig
from testkit.gateway import make_batch


def replica(db: Path) -> Ingest:
    return Ingest(SqliteStorage(str(db)), Tracker(TrackerConfig(silent_ms=3000)), Counters())


def note(payload: str) -> dict[str, Any]:
    decoded = pgnotify.decode(payload)
    assert decoded is not None
    return decoded


MEMBERS = [["lead", 900, 900, 900, 1, 0], ["m-1", 700, 700, 700, 0, 200]]


def test_a_batch_another_replica_stored_shows_here(tmp_path: Path) -> None:
    took, other = replica(tmp_path / "gw.db"), replica(tmp_path / "gw.db")
    peers = Peers(other)
    rows = [["m-1", 1, s, 1_700_000_000_000 + s, {"temp": 20_000 + s}] for s in range(3)]
    body = make_batch(1, "farm", "lead", rows, members=MEMBERS)
    result = took.receive("mqtt", "farm", "lead", 4, body, 10_000)
    assert result.status == ACK_OK
    notes = [
        note(pgnotify.batch_note("farm", "lead", 4, ACK_OK, 3, 0, 10_000)),
        note(pgnotify.election_note("farm", 4, "lead", "first seen", 10_000)),
    ]
    events = peers.apply(notes, 10_050, with_readings=True)
    kinds = [e["type"] for e in events]
    assert kinds == ["batch", "election", "mesh"]
    assert all(e["remote"] for e in events)
    batch = events[0]
    assert [r[:3] for r in batch["readings"]] == [["m-1", 1, s] for s in range(3)]
    assert batch["agg"] == [["m-1", "temp", 3, 20_000, 20_002, 20_001]]
    state = events[-1]["mesh"]
    assert (state["leader"], state["term"]) == ("lead", 4)
    assert [(m["node"], m["last_seen_ms"]) for m in state["members"]] == [
        ("lead", 10_000),
        ("m-1", 9_800),
    ]
    # Without a browser watching, nothing is read back but the members.
    events = peers.apply(notes[:1], 10_060, with_readings=False)
    assert events[0]["readings"] == [] and events[0]["inserted"] == 3
    # A fenced batch is a fenced event, and moves nothing.
    fenced = note(pgnotify.batch_note("farm", "old", 3, ACK_FENCED, 0, 0, 10_100))
    events = peers.apply([fenced], 10_100, with_readings=True)
    assert [e["type"] for e in events] == ["fenced", "mesh"]
    assert events[0]["highest_term"] == 4 and events[1]["mesh"]["leader"] == "lead"


def test_silence_is_judged_from_the_shared_rows(tmp_path: Path) -> None:
    """A replica that took none of a mesh's batches neither calls a node silent while another
    replica hears it, nor misses it when it falls silent."""
    took, other = replica(tmp_path / "gw.db"), replica(tmp_path / "gw.db")
    peers = Peers(other)
    for i, at in enumerate(range(10_000, 20_000, 1000)):
        took.receive("mqtt", "farm", "lead", 1, make_batch(i, "farm", "lead", [], MEMBERS), at)
        peers.apply([note(pgnotify.batch_note("farm", "lead", 1, ACK_OK, 0, 0, at))], at, False)
        assert other.tick(at) == []  # m-1 heard 200 ms before each batch
    members = [["lead", 900, 900, 900, 1, 0], ["m-1", 700, 700, 700, 0, 5000]]
    took.receive("mqtt", "farm", "lead", 1, make_batch(99, "farm", "lead", [], members), 20_000)
    peers.apply([note(pgnotify.batch_note("farm", "lead", 1, ACK_OK, 0, 0, 20_000))], 20_000, False)
    assert other.tick(20_000) == []  # last heard at 18.8 s
    alerts = [e for e in other.tick(22_000) if e["type"] == "alert"]
    assert [(a["kind"], a["node"]) for a in alerts] == [("node_silent", "m-1")]


def test_alerts_and_clears_from_other_replicas_are_shown_once(tmp_path: Path) -> None:
    ingest = replica(tmp_path / "gw.db")
    peers = Peers(ingest)
    raised = note(
        '{"k":"a","id":7,"m":"farm","kind":"node_silent","n":"m-1","msg":"m-1 silent","at":5,'
        '"cl":null}'
    )
    events = peers.apply([raised], 100, False)
    assert [(e["type"], e["id"]) for e in events if e["type"] == "alert"] == [("alert", 7)]
    assert ingest.tracker.active[("farm", "node_silent", "m-1")]["id"] == 7
    # The same note again (say, after a resync) is not shown twice.
    assert [e for e in peers.apply([raised], 101, False) if e["type"] == "alert"] == []
    cleared = note(json.dumps(dict(raised, k="c", cl=90)))
    events = peers.apply([cleared], 102, False)
    assert [(e["type"], e["id"], e["cleared_ms"]) for e in events] == [("alert_cleared", 7, 90)]
    assert ingest.tracker.active == {}


def test_a_resync_reads_everything_again(tmp_path: Path) -> None:
    took, other = replica(tmp_path / "gw.db"), replica(tmp_path / "gw.db")
    took.receive("udp", "farm", "lead", 2, make_batch(1, "farm", "lead", [], MEMBERS), 10_000)
    took.storage.raise_alert("farm", "low_battery", "m-1", "m-1 battery low (150)", 10_000)
    events = Peers(other).apply([SYNC], 10_500, False)
    assert {(e["type"], e.get("leader")) for e in events if e["type"] == "election"} == {
        ("election", "lead")
    }
    assert [e["kind"] for e in events if e["type"] == "alert"] == ["low_battery"]
    state = other.mesh_state("farm")
    assert (state["leader"], state["term"], len(state["members"])) == ("lead", 2, 2)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "[1, 2]",
        '{"k": "x"}',
        '{"k": "b", "m": "farm"}',
        '{"k":"b","m":"farm","l":"lead","t":"1","s":0,"i":0,"d":0,"at":1}',
        '{"k":"e","m":"farm","t":true,"l":"lead","r":"crash","at":1}',
        '{"k":"c","id":1,"m":"f","kind":"x","n":"","msg":"","at":1,"cl":null}',
    ],
)
def test_anything_else_on_the_channel_is_dropped(payload: str) -> None:
    assert pgnotify.decode(payload) is None


def test_a_resync_does_not_take_an_old_batch_for_news(tmp_path: Path) -> None:
    """A mesh without a batch for long has its no_leader alert: reading it back again (a
    resync) leaves the alert open."""
    took, other = replica(tmp_path / "gw.db"), replica(tmp_path / "gw.db")
    took.receive("udp", "farm", "lead", 2, make_batch(1, "farm", "lead", [], MEMBERS), 10_000)
    peers = Peers(other)
    peers.apply([SYNC], 10_100, False)
    raised = [e for e in other.tick(40_000) if e["type"] == "alert"]
    assert [a["kind"] for a in raised] == ["no_leader"]
    events = peers.apply([SYNC], 41_000, False)
    assert [e for e in events if e["type"].startswith("alert")] == []
    assert ("farm", "no_leader", "") in other.tracker.active
