"""The other gateway replicas' writes, applied to this replica's live view.

Sans-IO, like gateway/ingest.py: notes in (gateway/pgnotify.py, in the order their
transactions committed), live-feed events out. It runs on the worker thread that owns the
storage and the tracker. Each replica publishes each fact once on its own feed:

- a batch another replica stored moves this tracker's leader, term and members (read back from
  the database: who was heard when decides who is silent, on every replica alike) and becomes a
  ``batch`` event with its readings and aggregates read back too (only while a browser
  listens);
- an election, alert or clear another replica recorded is published as it was recorded. The
  time-driven alerts (silent node, no leader) are noticed by every replica's own timer, but the
  database holds one open alert per (mesh, kind, node) (gateway/pgstorage.py), so only the first
  replica's raise stores and publishes; the others take its id and publish its note.

Events about what other replicas did are marked ``remote``: Home Assistant is fed by the
replica that did it, once (gateway/homeassistant.py leaves them out).

A ``sync`` note (after the listening connection was made, or made again) reads everything back
from the database: what happened while nobody listened is not lost.
"""

from __future__ import annotations

from typing import Any

from agent.core.messages import ACK_OK
from gateway.ingest import Ingest
from gateway.storage import StorageError
from gateway.tracker import Change

SYNC = {"k": "sync"}
# At most this many readings and aggregates read back per mesh and round for the live feed.
MAX_ROWS = 2000
# Alert ids already published from notes (bounded; a clear forgets its id).
MAX_SHOWN = 10_000
_RESYNC_ELECTIONS = 200


class Peers:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.stale = False  # a round failed on the storage: read everything again next tick
        self._shown: set[int] = set()

    def apply(
        self, notes: list[dict[str, Any]], now: int, with_readings: bool
    ) -> list[dict[str, Any]]:
        """Apply notes that arrived together; ``with_readings``: read the batches' readings
        back for the live feed (someone watches it)."""
        try:
            if self.stale or any(note["k"] == "sync" for note in notes):
                self.stale = False
                return self._resync(now)
            return self._apply(notes, now, with_readings)
        except StorageError as exc:
            self.ingest.health.storage_failed("replicas", exc, now)
            self.stale = True
            return []

    def tick(self, now: int) -> list[dict[str, Any]]:
        return self.apply([SYNC], now, False) if self.stale else []

    def _apply(
        self, notes: list[dict[str, Any]], now: int, with_readings: bool
    ) -> list[dict[str, Any]]:
        tracker = self.ingest.tracker
        events: list[dict[str, Any]] = []
        changes: list[Change] = []
        batches: dict[str, list[dict[str, Any]]] = {}
        for note in notes:
            if note["k"] == "b":
                batches.setdefault(note["m"], []).append(note)
                accepted = note["s"] == ACK_OK
                at = min(note["at"], now)
                changes += tracker.adopt_batch(note["m"], note["l"], note["t"], accepted, at)
        for mesh in sorted(batches):
            changes += tracker.adopt_nodes(mesh, self.ingest.storage.nodes(mesh), now)
            events += self._batch_events(mesh, batches[mesh], with_readings)
        for note in notes:
            if note["k"] == "e":
                tracker.adopt_election(note["m"], note["t"], note["l"])
                events.append(
                    {"type": "election", "mesh": note["m"], "term": note["t"],
                     "leader": note["l"], "reason": note["r"], "at_ms": note["at"]}
                )  # fmt: skip
            elif note["k"] == "a":
                events += self._raised(_alert(note))
            elif note["k"] == "c":
                self._shown.discard(note["id"])
                tracker.adopt_clear(note["m"], note["kind"], note["n"], note["id"])
                events.append(dict(_alert(note), type="alert_cleared", cleared_ms=note["cl"]))
        return self._finish(events, changes, set(batches), now)

    def _raised(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        self.ingest.tracker.adopt_alert(record)
        if record["id"] in self._shown:
            return []
        if len(self._shown) >= MAX_SHOWN:
            self._shown.clear()
        self._shown.add(record["id"])
        return [dict(record, type="alert", cleared_ms=None)]

    def _batch_events(
        self, mesh: str, notes: list[dict[str, Any]], with_readings: bool
    ) -> list[dict[str, Any]]:
        """One event per note: ``batch`` (its readings and aggregates read back by the time
        the replica received them) or ``fenced``."""
        readings: dict[int, list[list[Any]]] = {}
        aggregates: dict[int, list[list[Any]]] = {}
        if with_readings:
            storage = self.ingest.storage
            since = min(n["at"] for n in notes)
            until = max(n["at"] for n in notes) + 1
            for r in storage.readings(mesh, None, since, until, MAX_ROWS):
                readings.setdefault(r["received_ms"], []).append(
                    [r["node"], r["boot"], r["seq"], r["t_ms"], r["metrics"]]
                )
            for a in storage.aggregates(mesh, since, until, MAX_ROWS):
                aggregates.setdefault(a["received_ms"], []).append(
                    [a["node"], a["metric"], a["count"], a["min"], a["max"], a["mean"]]
                )
        events: list[dict[str, Any]] = []
        state = self.ingest.tracker.meshes[mesh]
        for note in notes:
            base = {"mesh": mesh, "leader": note["l"], "term": note["t"], "at_ms": note["at"]}
            if note["s"] != ACK_OK:
                events.append(dict(base, type="fenced", highest_term=state.term))
                continue
            events.append(
                dict(
                    base,
                    type="batch",
                    batch_id=None,
                    inserted=note["i"],
                    duplicates=note["d"],
                    # Several batches received in one ms: the first event carries their rows.
                    readings=readings.pop(note["at"], []),
                    agg=aggregates.pop(note["at"], []),
                )
            )
        return events

    def _resync(self, now: int) -> list[dict[str, Any]]:
        """Everything from the database again (after missed notes)."""
        ingest, tracker = self.ingest, self.ingest.tracker
        storage = ingest.storage
        events: list[dict[str, Any]] = []
        changes: list[Change] = []
        meshes = storage.meshes()
        for row in meshes:
            name = row["name"]
            at = min(row["updated_ms"], now)
            changes += tracker.adopt_batch(name, row["leader"], row["term"], True, at)
            changes += tracker.adopt_nodes(name, storage.nodes(name), now)
        for row in storage.elections(None, _RESYNC_ELECTIONS):
            if tracker.adopt_election(row["mesh"], row["term"], row["leader"]):
                events.append(dict(row, type="election"))
        open_alerts = storage.alerts(None, True, 10_000)
        open_ids = {row["id"] for row in open_alerts}
        for key, record in sorted(tracker.active.items()):
            if record.get("id") is not None and record["id"] not in open_ids:
                del tracker.active[key]  # cleared by another replica meanwhile
                events.append(dict(record, type="alert_cleared", cleared_ms=now))
        for row in open_alerts:
            current = tracker.active.get((row["mesh"], row["kind"], row["node"]))
            if current is None or current.get("id") != row["id"]:
                events += self._raised(row)
        return self._finish(events, changes, {row["name"] for row in meshes}, now)

    def _finish(
        self, events: list[dict[str, Any]], changes: list[Change], meshes: set[str], now: int
    ) -> list[dict[str, Any]]:
        """Mark what other replicas did ``remote``; add what this view infers from it (stored
        once across replicas: this replica's own doing) and each mesh touched as it stands."""
        out = [dict(event, remote=True) for event in events]
        out += self.ingest.apply(changes, now)
        touched = meshes | {change.mesh for change in changes}
        for name in sorted(touched):
            out.append({"type": "mesh", "mesh": self.ingest.mesh_state(name), "remote": True})
        return out


def _alert(note: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": note["id"],
        "mesh": note["m"],
        "kind": note["kind"],
        "node": note["n"],
        "message": note["msg"],
        "raised_ms": note["at"],
    }
