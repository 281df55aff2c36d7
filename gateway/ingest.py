"""The ingest path: one decoded BATCH in, one BATCH_ACK decision and live-feed events out.

Sans-IO (no sockets, no clock): the transports decode frames and call :meth:`Ingest.receive`
with the arrival time; this module validates the batch, lets the storage fence and dedup it
(inside the database, so it holds with several gateway processes), updates the mesh tracker,
persists the elections and alerts the tracker infers, and returns what to acknowledge and what
to publish. The caller runs every method on one worker thread (the storage is synchronous).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from agent.core.messages import ACK_OK, ACK_REJECTED
from gateway.batch import Batch, BatchError, parse_batch
from gateway.metrics import Counters
from gateway.storage import Storage
from gateway.tracker import Change, Tracker

# How much of the history to reload into the tracker after a restart.
_RESTORE_ELECTIONS = 500


class IngestResult(NamedTuple):
    status: int  # ACK_OK, ACK_FENCED or ACK_REJECTED
    highest_term: int
    batch_id: int | str
    reason: str  # why a batch was rejected ("" otherwise)
    events: list[dict[str, Any]]  # live-feed events, in order


class Ingest:
    def __init__(self, storage: Storage, tracker: Tracker, counters: Counters) -> None:
        self.storage = storage
        self.tracker = tracker
        self.counters = counters

    def restore(self) -> None:
        """Reload mesh state, recent elections and open alerts from storage."""
        meshes = self.storage.meshes()
        nodes = {m["name"]: self.storage.nodes(m["name"]) for m in meshes}
        elections = self.storage.elections(None, _RESTORE_ELECTIONS)
        alerts = self.storage.alerts(None, True, 10_000)
        self.tracker.restore(meshes, nodes, elections, alerts)

    def receive(
        self, transport: str, mesh: str, sender: str, term: int, body: Any, now_ms: int
    ) -> IngestResult:
        """Handle the body of a BATCH frame that ``sender`` of ``mesh`` sent with ``term``."""
        try:
            batch = parse_batch(body, mesh, sender)
        except BatchError as exc:
            return self._reject(transport, body, "batch_" + exc.reason)

        outcome = self.storage.ingest(term, batch, now_ms)
        accepted = outcome.status == ACK_OK
        self.counters.count_batch(transport, outcome.status)
        events: list[dict[str, Any]] = []
        if accepted:
            self.counters.readings_received += len(batch.readings)
            self.counters.count_stored(outcome.inserted, now_ms)
            self.counters.dedup_hits += outcome.duplicates
            events.append(_batch_event(term, batch, outcome.inserted, outcome.duplicates, now_ms))
        else:
            self.counters.fenced += 1
            events.append(
                {
                    "type": "fenced",
                    "mesh": mesh,
                    "leader": sender,
                    "term": term,
                    "highest_term": outcome.highest_term,
                    "at_ms": now_ms,
                }
            )
        changes = self.tracker.observe(term, batch, accepted, now_ms)
        events.extend(self._apply(changes, now_ms))
        if accepted or changes:
            events.append({"type": "mesh", "mesh": self.mesh_state(mesh)})
        return IngestResult(outcome.status, outcome.highest_term, batch.batch_id, "", events)

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """Time-driven alerts (no leader, silent node); returns live-feed events."""
        changes = self.tracker.tick(now_ms)
        events = self._apply(changes, now_ms)
        for mesh in sorted({change.mesh for change in changes}):
            events.append({"type": "mesh", "mesh": self.mesh_state(mesh)})
        return events

    def purge(self, now_ms: int) -> tuple[int, int]:
        return self.storage.purge(now_ms)

    def has_mesh(self, mesh: str) -> bool:
        if mesh in self.tracker.meshes:
            return True
        # Another gateway process sharing the database may have ingested it.
        return any(row["name"] == mesh for row in self.storage.meshes())

    def mesh_state(self, mesh: str) -> dict[str, Any]:
        tracked = self.tracker.meshes.get(mesh)
        if tracked is None:
            return self._stored_mesh_state(mesh)
        state = tracked.as_dict()
        state["alerts"] = self.tracker.active_alerts(mesh)
        return state

    def _stored_mesh_state(self, mesh: str) -> dict[str, Any]:
        row = next(r for r in self.storage.meshes() if r["name"] == mesh)
        members = self.storage.nodes(mesh)
        for member in members:
            member["leader"] = member["node"] == row["leader"]
        return {
            "name": mesh,
            "term": row["term"],
            "leader": row["leader"],
            "leader_since_ms": row["updated_ms"],
            "last_batch_ms": row["updated_ms"],
            "members": members,
            "alerts": self.storage.alerts(mesh, True, 100),
        }

    def mesh_states(self) -> list[dict[str, Any]]:
        return [self.mesh_state(name) for name in sorted(self.tracker.meshes)]

    # -- helpers -----------------------------------------------------------------------------

    def _reject(self, transport: str, body: Any, reason: str) -> IngestResult:
        self.counters.count_batch(transport, ACK_REJECTED)
        self.counters.count_drop(transport, reason)
        batch_id = body.get("id") if isinstance(body, dict) else None
        if not (type(batch_id) is int and batch_id >= 0) and not isinstance(batch_id, str):
            batch_id = 0
        return IngestResult(ACK_REJECTED, 0, batch_id, reason, [])

    def _apply(self, changes: list[Change], now_ms: int) -> list[dict[str, Any]]:
        """Persist what the tracker inferred; turn it into live-feed events."""
        events: list[dict[str, Any]] = []
        for change in changes:
            data = change.data
            if change.kind == "election":
                if self.storage.add_election(
                    data["mesh"], data["term"], data["leader"], data["reason"], data["at_ms"]
                ):
                    self.counters.elections += 1
                    events.append(dict(data, type="election"))
            elif change.kind == "raise":
                stored = self.storage.raise_alert(
                    data["mesh"], data["kind"], data["node"], data["message"], now_ms
                )
                data["id"] = stored["id"]  # the tracker keeps this dict: the id clears it later
                self.counters.alerts_raised += 1
                events.append(dict(stored, type="alert"))
            elif change.kind == "clear":
                if "id" in data:
                    self.storage.clear_alert(data["id"], now_ms)
                events.append(dict(data, type="alert_cleared"))
            elif change.kind == "lost":
                self.counters.lost_readings += data["count"]
        return events


def _batch_event(
    term: int, batch: Batch, inserted: int, duplicates: int, now_ms: int
) -> dict[str, Any]:
    return {
        "type": "batch",
        "mesh": batch.mesh,
        "leader": batch.leader,
        "term": term,
        "batch_id": batch.batch_id,
        "inserted": inserted,
        "duplicates": duplicates,
        "at_ms": now_ms,
        "readings": [[r.node, r.boot, r.seq, r.t_ms, r.metrics] for r in batch.readings],
        "agg": [list(a) for a in batch.aggregates],
    }
