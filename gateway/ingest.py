"""The ingest path: one decoded BATCH in, one BATCH_ACK decision and live-feed events out.

Sans-IO (no sockets, no clock): the transports decode frames and call :meth:`Ingest.receive`
with the arrival time; this module validates the batch, lets the storage fence and dedup it
(inside the database, so it holds with several gateway processes), updates the mesh tracker,
persists the elections and alerts the tracker infers, and returns what to acknowledge and what
to publish. The caller runs every method on one worker thread (the storage is synchronous).

When the storage fails (:class:`gateway.storage.StorageError`, e.g. a full disk) nothing is
lost and nothing stops. The batch is answered REJECTED with reason ``storage``, never OK: the
leader drops it and its members, who keep every reading until an OK comes back, send them
again; the leader's next batch is a new one, with a fresh mesh view (a batch resent unanswered
would repeat its old view for as long as the disk is full). The tracker takes the batch in
provisionally, so that alerts such as a silent node keep working, and what it infers is
published at once and *held*, in order, until the storage takes it (:meth:`Ingest.flush`, every
tick). Failures go to :class:`gateway.health.Health`, which logs and counts them.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, NamedTuple

from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED
from gateway import fence
from gateway.batch import Batch, BatchError, Records, parse_batch
from gateway.health import Health
from gateway.metrics import Counters
from gateway.storage import IngestOutcome, Purged, Storage, StorageError
from gateway.tracker import Change, Tracker

log = logging.getLogger("meshelect.gateway")

__all__ = ["ACK_FENCED", "ACK_OK", "ACK_REJECTED", "Arrival", "Ingest", "IngestResult"]

# How much of the history to reload into the tracker after a restart.
_RESTORE_ELECTIONS = 500
# Changes (alerts, elections) waiting for a failing storage; beyond this the oldest are dropped
# (counted): hours of alerts for a large site.
MAX_HELD = 10_000
_RESETS_PER_POLL = 100


class Arrival(NamedTuple):
    """A BATCH frame's content, decoded and authenticated by the transport."""

    transport: str
    mesh: str
    sender: str
    term: int
    body: Any
    checked: bool = False  # the codec applied the batch schema already (gateway/batch.py)
    records: Records | None = None  # the batch's records, if the frame decoder made them


class IngestResult(NamedTuple):
    status: int  # ACK_OK, ACK_FENCED or ACK_REJECTED
    highest_term: int
    batch_id: int | str
    reason: str  # why a batch was rejected ("storage": it could not be stored; "" if not)
    events: list[dict[str, Any]]  # live-feed events, in order


class Ingest:
    def __init__(
        self,
        storage: Storage,
        tracker: Tracker,
        counters: Counters,
        health: Health | None = None,
    ) -> None:
        self.storage = storage
        self.tracker = tracker
        self.counters = counters
        self.health = health or Health(counters)
        self.held: deque[Change] = deque()
        self._resets_seen = 0  # id of the last fence reset applied to the live view

    def restore(self) -> None:
        """Reload mesh state, recent elections, open alerts and fence resets from storage."""
        meshes = self.storage.meshes()
        nodes = {m["name"]: self.storage.nodes(m["name"]) for m in meshes}
        elections = self.storage.elections(None, _RESTORE_ELECTIONS)
        alerts = self.storage.alerts(None, True, 10_000)
        resets = self.storage.fence_resets(None, 0, 1_000_000)
        self.tracker.restore(meshes, nodes, elections, alerts, resets)
        self._resets_seen = max((row["id"] for row in resets), default=0)

    def receive(
        self, transport: str, mesh: str, sender: str, term: int, body: Any, now_ms: int
    ) -> IngestResult:
        """Handle the body of a BATCH frame that ``sender`` of ``mesh`` sent with ``term``."""
        return self.receive_many([Arrival(transport, mesh, sender, term, body)], now_ms)[0]

    def receive_many(self, arrivals: list[Arrival], now_ms: int) -> list[IngestResult]:
        """Handle batches that arrived together: one result each, in order.

        The valid ones are stored in one transaction (group commit, Storage.ingest_many):
        fenced and deduplicated one by one as if each came alone, one commit for them all.
        """
        results: list[IngestResult | None] = [None] * len(arrivals)
        parsed: list[tuple[int, Arrival, Batch]] = []
        for index, arrival in enumerate(arrivals):
            try:
                batch = parse_batch(
                    arrival.body,
                    arrival.mesh,
                    arrival.sender,
                    arrival.checked,
                    arrival.records,
                )
            except BatchError as exc:
                results[index] = self._reject(
                    arrival.transport, arrival.body, "batch_" + exc.reason
                )
                continue
            parsed.append((index, arrival, batch))
        try:
            stored = self.storage.ingest_many([(a.term, b) for _, a, b in parsed], now_ms)
        except StorageError as exc:
            for index, arrival, batch in parsed:
                results[index] = self._unstored(arrival.transport, arrival.term, batch, exc, now_ms)
            return [r for r in results if r is not None]
        for (index, arrival, batch), outcome in zip(parsed, stored, strict=True):
            if isinstance(outcome, Exception):  # a bug in storing this one batch
                log.error("storing batch %r failed", batch.batch_id, exc_info=outcome)
                results[index] = self._reject(arrival.transport, arrival.body, "internal_error")
            else:
                results[index] = self._stored(
                    arrival.transport, arrival.term, batch, outcome, now_ms
                )
        return [r for r in results if r is not None]

    def _stored(
        self, transport: str, term: int, batch: Batch, outcome: IngestOutcome, now_ms: int
    ) -> IngestResult:
        """The storage's verdict on a batch: count it, update the live view, make events."""
        mesh, sender = batch.mesh, batch.leader
        if outcome.status == ACK_REJECTED:
            return self._refused(transport, term, batch, outcome.highest_term, now_ms)
        accepted = outcome.status == ACK_OK
        self.counters.count_batch(transport, outcome.status)
        events: list[dict[str, Any]] = []
        if accepted:
            self.health.storage_wrote()
            self.counters.readings_received += len(batch.readings)
            self.counters.count_stored(outcome.inserted + outcome.reused, now_ms)
            self.counters.dedup_hits += outcome.duplicates
            self.counters.boot_reuse += outcome.reused
            events.append(_batch_event(term, batch, outcome.inserted, outcome.duplicates, now_ms))
            if outcome.reused:
                log.warning(
                    "%s: %d readings of %s reused stored ids: stored apart",
                    batch.mesh,
                    outcome.reused,
                    ", ".join(outcome.reused_nodes),
                )
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
        if outcome.reused:
            changes += self.tracker.boot_reused(mesh, outcome.reused_nodes, outcome.reused, now_ms)
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

    def flush(self, now_ms: int) -> list[dict[str, Any]]:
        """Store the changes held while the storage failed, in order; stop at a failure.

        Returns an ``alert`` event for each alert stored now and still open: the same alert as
        published when it was raised, now with its storage id.
        """
        events: list[dict[str, Any]] = []
        while self.held:
            change = self.held[0]
            try:
                self._persist(change)
            except StorageError as exc:
                self.health.storage_failed("alerts", exc, now_ms)
                break
            self.held.popleft()
            self.health.storage_wrote()
            data = change.data
            if change.kind == "raise" and self.tracker.active.get(_alert_key(data)) is data:
                events.append(dict(data, type="alert", cleared_ms=None))
        return events

    def reset_fence(self, mesh: str, term: int, source: str, now_ms: int) -> dict[str, Any] | None:
        """An operator's fence reset (raises StorageError); None if the mesh is unknown."""
        record = self.storage.reset_fence(mesh, term, source, now_ms)
        if record is not None:
            self.health.storage_wrote()
        return record

    def poll_fence_resets(self, now_ms: int) -> list[dict[str, Any]]:
        """Apply fence resets recorded since the last poll (by the API, or by ``meshelect
        gateway fence-reset`` from another process) to the live view; log and publish them."""
        try:
            rows = self.storage.fence_resets(None, self._resets_seen, _RESETS_PER_POLL)
        except StorageError as exc:
            self.health.storage_failed("fence_resets", exc, now_ms)
            return []
        events: list[dict[str, Any]] = []
        for row in rows:
            self._resets_seen = row["id"]
            self.counters.fence_resets += 1
            log.warning(
                "fence of mesh %s reset by operator (%s) from term %d to term %d",
                row["mesh"],
                row["source"],
                row["from_term"],
                row["to_term"],
            )
            events.append(dict(row, type="fence_reset"))
            if self.tracker.fence_reset(row):
                events.append({"type": "mesh", "mesh": self.mesh_state(row["mesh"])})
        return events

    def purge(self, now_ms: int, agg_now_ms: int | None = None) -> Purged:
        return self.storage.purge(now_ms, agg_now_ms)

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
        resets = self.storage.fence_resets(mesh, 0, 1_000_000)
        return {
            "name": mesh,
            "term": row["term"],
            "leader": row["leader"],
            "leader_since_ms": row["updated_ms"],
            "last_batch_ms": row["updated_ms"],
            "members": members,
            "fence_resets": len(resets),
            "fence_reset": resets[-1] if resets else None,
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

    def _refused(
        self, transport: str, term: int, batch: Batch, fence_term: int, now_ms: int
    ) -> IngestResult:
        """A term jump from a sender never seen in the mesh: REJECTED, counted, alerted."""
        self.counters.count_batch(transport, ACK_REJECTED, "refused")
        self.counters.term_jumps_refused += 1
        changes = self.tracker.refused(term, batch, fence_term, now_ms)
        if changes:
            log.warning("%s: %s", batch.mesh, changes[0].data["message"])
        events: list[dict[str, Any]] = [
            {
                "type": "refused",
                "mesh": batch.mesh,
                "leader": batch.leader,
                "term": term,
                "highest_term": fence_term,
                "at_ms": now_ms,
            }
        ]
        events.extend(self._apply(changes, now_ms))
        return IngestResult(ACK_REJECTED, fence_term, batch.batch_id, "term_jump", events)

    def _unstored(
        self, transport: str, term: int, batch: Batch, error: StorageError, now_ms: int
    ) -> IngestResult:
        """The storage failed: REJECTED (sent again later), but the live view goes on."""
        self.health.storage_failed("ingest", error, now_ms)
        self.counters.count_batch(transport, ACK_REJECTED, "unstored")
        state = self.tracker.meshes.get(batch.mesh)
        fence_term = None if state is None else state.term
        verdict = fence.decide(
            fence_term, term, lambda: self.tracker.knows(batch.mesh, batch.leader)
        )
        events: list[dict[str, Any]] = []
        if verdict != fence.REFUSED:
            changes = self.tracker.observe(term, batch, verdict == fence.ACCEPT, now_ms)
            events = self._apply(changes, now_ms)
            events.append({"type": "mesh", "mesh": self.mesh_state(batch.mesh)})
        return IngestResult(ACK_REJECTED, fence_term or 0, batch.batch_id, "storage", events)

    def _apply(self, changes: list[Change], now_ms: int) -> list[dict[str, Any]]:
        """Persist what the tracker inferred (or hold it); turn it into live-feed events."""
        events: list[dict[str, Any]] = []
        for change in changes:
            data = change.data
            if change.kind == "lost":
                self.counters.lost_readings += data["count"]
                continue
            stored: Any = None
            if not self.held:  # else it waits its turn behind the held ones
                try:
                    stored = self._persist(change)
                    self.health.storage_wrote()
                except StorageError as exc:
                    self.health.storage_failed("alerts", exc, now_ms)
            if stored is None:
                self._hold(change)
            # False: another gateway process sharing the database did it first; its
            # notification brings it to this live feed (gateway/peers.py).
            if stored is False:
                continue
            if change.kind == "election":
                events.append(dict(data, type="election"))
            elif change.kind == "raise":
                self.counters.alerts_raised += 1
                events.append(dict(data, type="alert", id=data.get("id"), cleared_ms=None))
            elif change.kind == "clear":
                events.append(dict(data, type="alert_cleared"))
        return events

    def apply(self, changes: list[Change], now_ms: int) -> list[dict[str, Any]]:
        """Persist and publish changes inferred from another replica's writes (peers.py)."""
        return self._apply(changes, now_ms)

    def _persist(self, change: Change) -> Any:
        """Store one change; the stored alert for a raise, else True; False when another
        gateway process recorded the election, raised the alert or cleared it first (the
        raise then takes that alert's id, time and message). Raises StorageError."""
        data = change.data
        if change.kind == "election":
            added = self.storage.add_election(
                data["mesh"], data["term"], data["leader"], data["reason"], data["at_ms"]
            )
            if added:
                self.counters.elections += 1
            return added
        if change.kind == "raise":
            stored = self.storage.raise_alert(
                data["mesh"], data["kind"], data["node"], data["message"], data["raised_ms"]
            )
            data["id"] = stored["id"]  # the tracker keeps this dict: the id clears it later
            if not stored["new"]:
                data["raised_ms"], data["message"] = stored["raised_ms"], stored["message"]
                return False
            return stored
        alert_id = (change.record or data).get("id")
        if alert_id is None:  # its raise was dropped from a full hold
            return True
        return self.storage.clear_alert(alert_id, data["cleared_ms"])

    def _hold(self, change: Change) -> None:
        if len(self.held) >= MAX_HELD:
            self.held.popleft()
            self.counters.held_dropped += 1
        self.held.append(change)


def _alert_key(alert: dict[str, Any]) -> tuple[str, str, str]:
    return alert["mesh"], alert["kind"], alert["node"]


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
        "readings": batch.rows
        or [[r.node, r.boot, r.seq, r.t_ms, r.metrics] for r in batch.readings],
        "agg": batch.agg_rows or [list(a) for a in batch.aggregates],
    }
