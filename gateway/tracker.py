"""Mesh state, election history and alerts, inferred from the batches leaders send.

Sans-IO: no database, no sockets, no clock. The caller passes every batch (accepted or fenced)
with the time it arrived, and calls :meth:`Tracker.tick` now and then; both return a list of
:class:`Change` records (an election to record, an alert to raise or clear) that the caller
persists and publishes.

How elections are explained: a leader's batch may report the elections it knows of with their
reason (``elections`` in the batch). When a mesh changes leader or term without such a report,
the gateway infers a reason from what it saw:

- ``partition merge``: two leaders were active at once shortly before (split brain healed);
- ``handoff``: the previous leader is still listed and flagged as leaving;
- ``crash``: the previous leader is gone from the member list, or has not been heard lately;
- ``score``: the previous leader is alive and present, so a better-scored node took over.

It also keeps each mesh's operator fence resets (the latest is shown with the mesh) and the
``term_jump`` alerts for batches refused by the fencing rule (gateway/fence.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from gateway.batch import Batch

F_LEADER = 1
F_LOW_BATTERY = 8
F_LEAVING = 16

ALERT_NO_LEADER = "no_leader"
ALERT_TWO_LEADERS = "two_leaders"
ALERT_LOW_BATTERY = "low_battery"
ALERT_NODE_SILENT = "node_silent"
ALERT_READINGS_DROPPED = "readings_dropped"
ALERT_TERM_JUMP = "term_jump"
ALERT_BOOT_REUSE = "boot_reuse"

REASON_CRASH = "crash"
REASON_HANDOFF = "handoff"
REASON_MERGE = "partition merge"
REASON_SCORE = "score"
REASON_FIRST_SEEN = "first seen"

# Spellings a leader may use for a reason, mapped to the dashboard's words.
_REASON_ALIASES = {
    # agent/core/node.py's lead_reason values
    "start": "first election",
    "merge": REASON_MERGE,
    "shutdown": REASON_HANDOFF,
    "battery": "low battery",
    "partition_merge": REASON_MERGE,
    "partition-merge": REASON_MERGE,
    "partition": REASON_MERGE,
    "lease": REASON_CRASH,
    "timeout": REASON_CRASH,
    "low_battery": "low battery",
}

# Bounds so a misbehaving mesh cannot grow the gateway's memory without limit.
MAX_MEMBERS_PER_MESH = 256
MAX_LEADERS_TRACKED = 16


class TrackerConfig:
    """Alert thresholds. Times in ms; battery in the agents' units (per mille)."""

    def __init__(
        self,
        no_leader_ms: int = 25_000,
        split_window_ms: int = 3_000,
        low_battery: int = 200,
        silent_ms: int = 15_000,
        drop_alert_ms: int = 60_000,
        crash_age_ms: int = 5_000,
        forget_ms: int = 3_600_000,
    ) -> None:
        # No accepted batch for this long: the mesh has no (reachable) leader. A leader with
        # nothing to send still sends a batch every 10 s (datapath.BATCH_IDLE_MS): 2.5x that.
        self.no_leader_ms = no_leader_ms
        # Batches of two leaders interleaving within this window: two leaders at once.
        self.split_window_ms = split_window_ms
        self.low_battery = low_battery
        self.silent_ms = silent_ms
        # A dropped-readings (or refused term jump) alert stays up this long after the last one.
        self.drop_alert_ms = drop_alert_ms
        # A previous leader the new leader has not heard for this long is taken as crashed.
        self.crash_age_ms = crash_age_ms
        # A node unheard this long leaves the live view (and its alerts clear): it was taken
        # out of service. Its rows stay in storage.
        self.forget_ms = forget_ms


class Change(NamedTuple):
    kind: str  # "election", "raise", "clear", "lost"
    mesh: str
    data: dict[str, Any]
    # For "clear": the alert record as raised, which gets its storage id when it is stored
    # (perhaps only after this change was made, if the storage was failing).
    record: dict[str, Any] | None = None


class NodeState:
    __slots__ = ("battery", "dropped", "flags", "last_seen_ms", "link", "node", "score")

    def __init__(self, node: str) -> None:
        self.node = node
        self.score = 0
        self.battery = 0
        self.link = 0
        self.flags = 0
        self.last_seen_ms = 0
        self.dropped = 0

    def as_dict(self, leader: str | None) -> dict[str, Any]:
        return {
            "node": self.node,
            "score": self.score,
            "battery": self.battery,
            "link": self.link,
            "flags": self.flags,
            "last_seen_ms": self.last_seen_ms,
            "dropped": self.dropped,
            "leader": self.node == leader,
        }


class MeshState:
    def __init__(self, name: str) -> None:
        self.name = name
        self.term = 0
        self.leader: str | None = None
        self.leader_since_ms = 0
        self.last_ok_ms = 0  # last accepted batch
        self.nodes: dict[str, NodeState] = {}
        # leader id -> arrival time of its latest batch (accepted or fenced).
        self.last_batch_ms: dict[str, int] = {}
        self.split_seen_ms = -1  # last time two leaders were seen interleaving
        self.split_pair: tuple[str, str] | None = None
        self.known_elections: set[tuple[int, str]] = set()
        self.drop_seen_ms: dict[str, int] = {}
        self.refused_seen_ms: dict[str, int] = {}  # sender -> its last refused term jump
        self.fence_resets = 0
        self.fence_reset: dict[str, Any] | None = None  # the latest

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "term": self.term,
            "leader": self.leader,
            "leader_since_ms": self.leader_since_ms,
            "last_batch_ms": self.last_ok_ms,
            "members": [self.nodes[n].as_dict(self.leader) for n in sorted(self.nodes)],
            "fence_resets": self.fence_resets,
            "fence_reset": self.fence_reset,
        }


class Tracker:
    """The gateway's live picture of every mesh."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.meshes: dict[str, MeshState] = {}
        # (mesh, kind, node) -> the alert record as stored (has an "id" once persisted).
        self.active: dict[tuple[str, str, str], dict[str, Any]] = {}

    # -- restoring after a restart -----------------------------------------------------------

    def restore(
        self,
        meshes: list[dict[str, Any]],
        nodes: dict[str, list[dict[str, Any]]],
        elections: list[dict[str, Any]],
        alerts: list[dict[str, Any]],
        fence_resets: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Seed the picture from storage, so a restart neither forgets nor re-raises."""
        for row in meshes:
            state = self._mesh(row["name"])
            state.term = row["term"]
            state.leader = row["leader"]
            state.last_ok_ms = row["updated_ms"]
            state.leader_since_ms = row["updated_ms"]
            for item in nodes.get(row["name"], []):
                node = state.nodes.setdefault(item["node"], NodeState(item["node"]))
                node.score = item["score"]
                node.battery = item["battery"]
                node.link = item["link"]
                node.flags = item["flags"]
                node.last_seen_ms = item["last_seen_ms"]
                node.dropped = item["dropped"]
        for row in elections:
            self._mesh(row["mesh"]).known_elections.add((row["term"], row["leader"]))
        for row in alerts:
            if row["cleared_ms"] is None:
                self.active[(row["mesh"], row["kind"], row["node"])] = dict(row)
        for row in fence_resets:
            reset_mesh = self.meshes.get(row["mesh"])
            if reset_mesh is not None:
                reset_mesh.fence_resets += 1
                reset_mesh.fence_reset = dict(row)

    def knows(self, mesh: str, node: str) -> bool:
        """Was ``node`` seen in ``mesh`` (as a member or leader) by this gateway's live view?"""
        state = self.meshes.get(mesh)
        return state is not None and (
            node in state.nodes
            or node == state.leader
            or any(leader == node for _, leader in state.known_elections)
        )

    def fence_reset(self, row: dict[str, Any]) -> bool:
        """An operator reset ``row["mesh"]``'s fence to ``row["to_term"]``; False if the mesh
        is not in the live view."""
        state = self.meshes.get(row["mesh"])
        if state is None:
            return False
        state.term = row["to_term"]
        state.fence_resets += 1
        state.fence_reset = dict(row)
        return True

    def refused(self, term: int, batch: Batch, fence_term: int, now: int) -> list[Change]:
        """A batch refused by the fencing rule: a term jump from a sender never seen."""
        state = self._mesh(batch.mesh)
        out: list[Change] = []
        sender = batch.leader
        if (
            sender not in state.refused_seen_ms
            and len(state.refused_seen_ms) >= MAX_LEADERS_TRACKED
        ):
            return out  # counted by the caller; a flood of names raises no more alerts
        state.refused_seen_ms[sender] = now
        message = (
            "batch from %s at term %d refused: the fence is at term %d and %s was never seen "
            "in this mesh" % (sender, term, fence_term, sender)
        )
        self._raise(state.name, ALERT_TERM_JUMP, sender, message, now, out)
        return out

    def boot_reused(self, mesh: str, nodes: Sequence[str], count: int, now: int) -> list[Change]:
        """Readings of ``nodes`` came with ids already taken by other readings (stored apart)."""
        out: list[Change] = []
        for node in nodes:
            message = (
                "%s sent readings whose (boot, seq) ids were already used by other readings "
                "(it lost its boot counter without a valid clock); %d stored apart, see "
                "reading_conflicts" % (node, count)
            )
            self._raise(mesh, ALERT_BOOT_REUSE, node, message, now, out)
        return out

    # -- batches -----------------------------------------------------------------------------

    def observe(self, term: int, batch: Batch, accepted: bool, now: int) -> list[Change]:
        """Take in one batch (``accepted`` False when it was fenced) that arrived at ``now``."""
        state = self._mesh(batch.mesh)
        changes: list[Change] = []
        self._check_split(state, batch.leader, now, changes)
        if not accepted:
            return changes
        previous_leader = state.leader
        previous_term = state.term
        state.last_ok_ms = now
        self._clear(state.name, ALERT_NO_LEADER, "", now, changes)

        reported = set()
        for election in batch.elections:
            if not election.leader:
                continue  # a term that ended leaderless: nothing to draw on the timeline
            reason = _REASON_ALIASES.get(election.reason, election.reason)
            reported.add((election.term, election.leader))
            self._election(state, election.term, election.leader, reason, now, changes)

        if term >= state.term and (term, batch.leader) != (previous_term, previous_leader):
            if (term, batch.leader) not in reported:
                reason = self._infer_reason(state, previous_leader, batch, now)
                self._election(state, term, batch.leader, reason, now, changes)
            if batch.leader != previous_leader:
                state.leader_since_ms = now
            state.term = term
            state.leader = batch.leader

        self._update_members(state, batch, now, changes)
        return changes

    def _infer_reason(self, state: MeshState, previous: str | None, batch: Batch, now: int) -> str:
        if previous is None:
            return REASON_FIRST_SEEN
        if (
            state.split_seen_ms >= 0
            and now - state.split_seen_ms <= 2 * self.config.split_window_ms
        ):
            return REASON_MERGE
        if previous == batch.leader:
            # Same leader, higher term: it lost and won again (e.g. after a partition).
            return REASON_MERGE
        for member in batch.members:
            if member.node == previous:
                if member.flags & F_LEAVING:
                    return REASON_HANDOFF
                if member.age_ms >= self.config.crash_age_ms:
                    return REASON_CRASH
                return REASON_SCORE
        return REASON_CRASH

    def _election(
        self, state: MeshState, term: int, leader: str, reason: str, now: int, out: list[Change]
    ) -> None:
        if not self._know(state, (term, leader)):
            return
        out.append(
            Change(
                "election",
                state.name,
                {
                    "mesh": state.name,
                    "term": term,
                    "leader": leader,
                    "reason": reason,
                    "at_ms": now,
                },
            )
        )

    def _know(self, state: MeshState, key: tuple[int, str]) -> bool:
        """Remember an election (term, leader); False if it was known."""
        if key in state.known_elections:
            return False
        state.known_elections.add(key)
        if len(state.known_elections) > 4 * MAX_LEADERS_TRACKED:
            # Only the newest terms matter for "seen already?"; drop the oldest half.
            keep = sorted(state.known_elections)[-2 * MAX_LEADERS_TRACKED :]
            state.known_elections = set(keep)
        return True

    def _check_split(self, state: MeshState, leader: str, now: int, out: list[Change]) -> None:
        window = self.config.split_window_ms
        previous = state.last_batch_ms.get(leader)
        state.last_batch_ms[leader] = now
        if previous is not None and now - previous <= window:
            # This leader sent before; did another leader send in between, recently?
            for other in sorted(state.last_batch_ms):
                seen = state.last_batch_ms[other]
                if other != leader and seen > previous and now - seen <= window:
                    state.split_seen_ms = now
                    state.split_pair = (min(leader, other), max(leader, other))
                    message = "two leaders at once: %s and %s" % state.split_pair
                    self._raise(state.name, ALERT_TWO_LEADERS, "", message, now, out)
                    break
        if len(state.last_batch_ms) > MAX_LEADERS_TRACKED:
            oldest = min(state.last_batch_ms, key=lambda k: (state.last_batch_ms[k], k))
            del state.last_batch_ms[oldest]

    def _update_members(self, state: MeshState, batch: Batch, now: int, out: list[Change]) -> None:
        config = self.config
        for member in batch.members:
            node = state.nodes.get(member.node)
            if node is None:
                if len(state.nodes) >= MAX_MEMBERS_PER_MESH:
                    continue
                node = state.nodes[member.node] = NodeState(member.node)
            node.score = member.score
            node.battery = member.battery
            node.link = member.link
            node.flags = member.flags
            node.last_seen_ms = max(node.last_seen_ms, now - member.age_ms)
            if now - node.last_seen_ms <= config.silent_ms:
                self._clear(state.name, ALERT_NODE_SILENT, member.node, now, out)
            if member.battery < config.low_battery or member.flags & F_LOW_BATTERY:
                message = "%s battery low (%d)" % (member.node, member.battery)
                self._raise(state.name, ALERT_LOW_BATTERY, member.node, message, now, out)
            else:
                self._clear(state.name, ALERT_LOW_BATTERY, member.node, now, out)
        for name, count in batch.dropped:
            node = state.nodes.get(name)
            if node is None:
                continue
            # Counts are the member's running total; a smaller one means the member restarted.
            lost = count - node.dropped if count >= node.dropped else count
            node.dropped = count
            if lost > 0:
                state.drop_seen_ms[name] = now
                message = "%s dropped %d readings (buffer full)" % (name, lost)
                out.append(Change("lost", state.name, {"node": name, "count": lost}))
                self._raise(state.name, ALERT_READINGS_DROPPED, name, message, now, out)

    # -- what other gateway replicas stored (gateway/peers.py) ------------------------------

    def adopt_batch(
        self, mesh: str, leader: str, term: int, accepted: bool, at: int
    ) -> list[Change]:
        """A batch that another replica sharing the database took (``accepted`` False: it
        fenced it) at ``at``. Leader, term and the time-driven alerts move as with
        :meth:`observe`; what the batch's content implies (elections, battery, drops) is
        recorded by that replica, and reaches this one as notes of its own."""
        state = self._mesh(mesh)
        changes: list[Change] = []
        self._check_split(state, leader, at, changes)
        if not accepted:
            return changes
        if at > state.last_ok_ms:  # else it is no news (a resync of what is known)
            state.last_ok_ms = at
            self._clear(mesh, ALERT_NO_LEADER, "", at, changes)
        if term >= state.term and (term, leader) != (state.term, state.leader):
            if leader != state.leader:
                state.leader_since_ms = at
            state.term = term
            state.leader = leader
        return changes

    def adopt_nodes(self, mesh: str, rows: list[dict[str, Any]], now: int) -> list[Change]:
        """A mesh's members as stored (``nodes`` rows), whoever stored them: when each was
        last heard decides who is silent, on every replica alike."""
        state = self._mesh(mesh)
        changes: list[Change] = []
        for row in rows:
            name = row["node"]
            node = state.nodes.get(name)
            if node is None:
                if (
                    len(state.nodes) >= MAX_MEMBERS_PER_MESH
                    or now - row["last_seen_ms"] > self.config.forget_ms
                ):
                    continue
                node = state.nodes[name] = NodeState(name)
            if row["last_seen_ms"] >= node.last_seen_ms:
                node.score = row["score"]
                node.battery = row["battery"]
                node.link = row["link"]
                node.flags = row["flags"]
                node.last_seen_ms = row["last_seen_ms"]
            node.dropped = row["dropped"]  # the running total the next batch is counted from
            if now - node.last_seen_ms <= self.config.silent_ms:
                self._clear(mesh, ALERT_NODE_SILENT, name, now, changes)
        return changes

    def adopt_election(self, mesh: str, term: int, leader: str) -> bool:
        """An election another replica recorded; False if this view knew it."""
        return self._know(self._mesh(mesh), (term, leader))

    def adopt_alert(self, record: dict[str, Any]) -> None:
        """An alert another replica raised: open here too, under its id, so that this replica
        neither raises it again nor misses clearing it."""
        key = (record["mesh"], record["kind"], record["node"])
        current = self.active.get(key)
        if current is None:
            self.active[key] = dict(record)
        else:
            current.update(record)  # held changes may refer to this very dict

    def adopt_clear(self, mesh: str, kind: str, node: str, alert_id: int) -> bool:
        """An alert another replica cleared; False if it was not open here."""
        key = (mesh, kind, node)
        current = self.active.get(key)
        if current is None or current.get("id") != alert_id:
            return False
        del self.active[key]
        return True

    # -- time --------------------------------------------------------------------------------

    def shift(self, step_ms: int) -> None:
        """The wall clock stepped by ``step_ms``: move every time point durations are measured
        from by as much, so the step does not count as time passing (ages stay right)."""
        for state in self.meshes.values():
            if state.last_ok_ms:
                state.last_ok_ms += step_ms
            if state.leader_since_ms:
                state.leader_since_ms += step_ms
            if state.split_seen_ms >= 0:
                state.split_seen_ms += step_ms
            for node in state.nodes.values():
                node.last_seen_ms += step_ms
            for times in (state.last_batch_ms, state.drop_seen_ms, state.refused_seen_ms):
                for key in times:
                    times[key] += step_ms

    def tick(self, now: int) -> list[Change]:
        """Raise and clear the alerts that depend on time passing."""
        config = self.config
        out: list[Change] = []
        for name in sorted(self.meshes):
            state = self.meshes[name]
            if state.last_ok_ms and now - state.last_ok_ms > config.no_leader_ms:
                message = "no batch from a leader for %d s" % ((now - state.last_ok_ms) // 1000)
                self._raise(name, ALERT_NO_LEADER, "", message, now, out)
            if state.split_seen_ms >= 0 and now - state.split_seen_ms > config.split_window_ms:
                self._clear(name, ALERT_TWO_LEADERS, "", now, out)
            for node_name in sorted(state.drop_seen_ms):
                if now - state.drop_seen_ms[node_name] > config.drop_alert_ms:
                    del state.drop_seen_ms[node_name]
                    self._clear(name, ALERT_READINGS_DROPPED, node_name, now, out)
            for sender in sorted(state.refused_seen_ms):
                if now - state.refused_seen_ms[sender] > config.drop_alert_ms:
                    del state.refused_seen_ms[sender]
                    self._clear(name, ALERT_TERM_JUMP, sender, now, out)
            if now - state.last_ok_ms > config.no_leader_ms:
                # Without a leader nobody reports members: "no leader" says it all, rather
                # than one "silent" alert per node.
                continue
            for node_name in sorted(state.nodes):
                node = state.nodes[node_name]
                if now - node.last_seen_ms > config.forget_ms:
                    del state.nodes[node_name]
                    for kind in (ALERT_NODE_SILENT, ALERT_LOW_BATTERY, ALERT_READINGS_DROPPED):
                        self._clear(name, kind, node_name, now, out)
                    state.drop_seen_ms.pop(node_name, None)
                    continue
                if node.flags & F_LEAVING:
                    continue  # left on purpose: not an alarm
                if now - node.last_seen_ms > config.silent_ms:
                    message = "%s silent for %d s" % (node_name, (now - node.last_seen_ms) // 1000)
                    self._raise(name, ALERT_NODE_SILENT, node_name, message, now, out)
        return out

    # -- helpers -----------------------------------------------------------------------------

    def _mesh(self, name: str) -> MeshState:
        state = self.meshes.get(name)
        if state is None:
            state = self.meshes[name] = MeshState(name)
        return state

    def _raise(
        self, mesh: str, kind: str, node: str, message: str, now: int, out: list[Change]
    ) -> None:
        key = (mesh, kind, node)
        if key in self.active:
            return
        record = {"mesh": mesh, "kind": kind, "node": node, "message": message, "raised_ms": now}
        self.active[key] = record
        out.append(Change("raise", mesh, record))

    def _clear(self, mesh: str, kind: str, node: str, now: int, out: list[Change]) -> None:
        record = self.active.pop((mesh, kind, node), None)
        if record is not None:
            out.append(Change("clear", mesh, dict(record, cleared_ms=now), record))

    def active_alerts(self, mesh: str | None = None) -> list[dict[str, Any]]:
        keys = sorted(k for k in self.active if mesh is None or k[0] == mesh)
        return [self.active[k] for k in keys]
