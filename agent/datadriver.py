"""The agent's data path driver: readings from the sensors to the gateway and acks back.

A member keeps each reading in its buffer (and the journal, agent/journal.py) until the
gateway confirmed it through the leader, and resends what is unconfirmed to whoever leads; a
leader collects its members' readings and its own into batches for the gateway and passes the
gateway's confirmations back. The rules live in the core (agent/core/datapath.py); this class
wires them to the election (who leads, which term), the transport and the journal, on the
runtime's clock. The runtime (agent/runtime.py) calls it; it never sleeps or reads a clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig
from agent.core import datapath
from agent.core.messages import ACK_FENCED, Msg
from agent.core.node import ROLE_LEADER, Node
from agent.journal import ReadingJournal, RecoveredReadings
from agent.logs import EventLog
from agent.transport import Transport

# A leader polls its collector this often (batches go out every BATCH_MS, 1 s); a member runs
# its buffer when a reading is taken, the leader changes, or a resend falls due.
LEADER_DATAPATH_MS = 200
IDLE_DATAPATH_MS = 1000


class DataPathDriver:
    def __init__(
        self,
        cfg: AgentConfig,
        boot: int,
        node: Node,
        transport: Transport,
        encode: Callable[[Msg], bytes | None],
        count: Callable[[str, int], None],
        log: EventLog,
        batch_rtt: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.boot = boot
        self.node = node
        self.transport = transport
        self.encode = encode
        self.count = count
        self.log = log
        self.batch_rtt = batch_rtt  # UDP: a batch's ack time is a link-quality sample
        self.buffer = datapath.ReadingBuffer(cfg.node_id, boot, cfg.buffer_capacity)
        self.collector = datapath.Collector(cfg.node_id, cfg.mesh, cfg.collector_capacity)
        self.recovered = self._recover_journals()
        self.journal = ReadingJournal(cfg.state_dir, boot, cfg.buffer_capacity)
        self.next_due = 0  # on the runtime's (pausable) clock; 0: run at the next turn
        self._elections: list[list[Any]] = []
        self._batch_sent_at: dict[int, int] = {}

    def _recover_journals(self) -> RecoveredReadings:
        found = ReadingJournal.recover(self.cfg.state_dir, self.boot, self.cfg.buffer_capacity)
        if found.items or found.dropped or found.bad_lines:
            self.log.info(
                "readings_recovered",
                count=len(found.items),
                dropped=found.dropped,
                bad_lines=found.bad_lines,
                journals=len(found.paths),
            )
        if found.stale or found.unreadable:
            self.log.warning(
                "journals_set_aside",
                stale=",".join(found.stale) or "-",
                unreadable=",".join(found.unreadable) or "-",
                why="stale: boot counter went back; their ids would clash with ours",
            )
        for name, n in (
            ("recovered_dropped", found.dropped),
            ("journal_bad_lines", found.bad_lines),
            ("journals_stale", len(found.stale)),
            ("journals_unreadable", len(found.unreadable)),
        ):
            if n:
                self.count(name, n)
        return RecoveredReadings(found.items, found.paths)

    # ---- frames from the mesh -------------------------------------------------------------

    def on_readings(self, msg: Msg) -> None:
        if msg.target != self.cfg.node_id or self.node.role != ROLE_LEADER:
            # Sent to us as leader, but we are not (any more): the member resends to the new one.
            self.count("readings_not_leader", 1)
            return
        added = self.collector.add(msg)
        self.count("readings_collected", added)

    def on_readings_ack(self, msg: Msg) -> None:
        if msg.target == self.cfg.node_id:
            self.count("readings_confirmed", self.buffer.on_ack(msg))
            self.recovered.confirm(msg.body)

    def on_batch_ack(self, msg: Msg, now: int) -> None:
        if msg.target != self.cfg.node_id:
            return
        body = msg.body if isinstance(msg.body, list) else []
        if body and isinstance(body[0], int):
            sent_at = self._batch_sent_at.pop(body[0], None)
            if sent_at is not None and self.batch_rtt is not None:
                self.batch_rtt(now - sent_at)
        if len(body) == 3 and body[1] == ACK_FENCED:
            self.log.warning(
                "batch_fenced", batch=body[0], highest_term=body[2], term=self.node.term
            )
        confirmations = []
        for member, ranges in self.collector.on_ack_msg(msg, now):
            if member == self.cfg.node_id:
                self.buffer.confirm(ranges)
                self.recovered.confirm(ranges)
            else:
                confirmations.append((member, ranges))
        for ack in datapath.make_ack_messages(self.cfg.node_id, self.node.term, confirmations):
            frame = self.encode(ack)
            if frame is not None and ack.target is not None:
                self.transport.send_readings_ack(ack.target, frame)

    # ---- the election moved, a reading was taken ------------------------------------------

    def on_role_change(self, was_leader: bool) -> None:
        node = self.node
        self.next_due = 0  # resend to the new leader / start collecting now
        if was_leader and node.role != ROLE_LEADER:
            self.collector.lost_leadership()
            self._batch_sent_at.clear()
        if node.role == ROLE_LEADER and not was_leader:
            self._elections.append([node.term, node.id, node.lead_reason or "start"])

    def take(self, metrics: dict[str, int]) -> None:
        """A new reading: buffered, journaled, and sent at the next turn."""
        self.next_due = 0
        t_ms = int(time.time() * 1000)  # readings carry wall time, for the gateway
        try:
            seq = self.buffer.add(t_ms, metrics)
        except ValueError as exc:
            self.count("bad_samples", 1)
            self.log.warning("sample_rejected", error=str(exc))
            return
        try:
            self.journal.add(seq, t_ms, metrics)
        except OSError as exc:  # a full disk must not stop the mesh; RAM still holds it
            self.count("journal_errors", 1)
            self.log.warning("journal_failed", error=str(exc))

    # ---- a turn ---------------------------------------------------------------------------

    def run(self, now: int, members: Callable[[int], list[list[Any]]]) -> None:
        """Send what is due (batches as leader, readings as member); sets `next_due`.
        `members(now)`: the members view a batch carries (only built when leading)."""
        node = self.node
        if node.role == ROLE_LEADER:
            self._run_leader(now, members(now))
        elif node.leader is not None:
            self._run_member(now, node.leader)
        self.next_due = self._due(now)

    def _run_leader(self, now: int, members: list[list[Any]]) -> None:
        node = self.node
        self.collector.pull_own(self.buffer, now, node.term)
        if self.recovered.items:
            self.collector.add(self.recovered.due(now, node.id, node.term), node.id)
        elections = self._elections
        self._elections = []
        for _ in range(datapath.MAX_IN_FLIGHT + 1):
            batch = self.collector.due_batch(now, node.term, members, elections)
            elections = []
            if batch is None:
                break
            frame = self.encode(datapath.batch_message(node.id, node.term, batch))
            if frame is None:
                continue
            if self.transport.send_batch(frame):
                self._batch_sent_at[batch["id"]] = now
                self.count("batches_sent", 1)
            else:
                self.count("batches_unsent", 1)  # no gateway known yet: resent later

    def _run_member(self, now: int, leader: str) -> None:
        node = self.node
        msgs = self.buffer.due_messages(now, leader, node.term) if now >= self.buffer.wakeup else []
        if self.recovered.items:
            readings = self.recovered.due(now, leader, node.term)
            msgs += datapath.make_messages(node.id, leader, node.term, readings)
        for msg in msgs:
            frame = self.encode(msg)
            if frame is not None and not self.transport.send_readings(leader, frame):
                self.count("readings_unsent", 1)

    def _due(self, now: int) -> int:
        node = self.node
        if node.role == ROLE_LEADER:
            return now + LEADER_DATAPATH_MS
        if node.leader is None:
            return now + IDLE_DATAPATH_MS
        return max(now + 1, min(self.buffer.wakeup, now + IDLE_DATAPATH_MS))

    # ---- status and shutdown --------------------------------------------------------------

    def trim_journal(self) -> None:
        """Let the journal forget what the buffer no longer holds (OSError: disk trouble)."""
        held = self.buffer.unconfirmed()
        self.journal.trim(held[0] if held else None)

    def status(self) -> dict[str, dict[str, Any]]:
        buffer = self.buffer
        collector = self.collector
        return {
            "buffer": {
                "depth": buffer.depth,
                "taken": buffer.taken,
                "dropped": buffer.dropped,
                "sent": buffer.sent,
                "resent": buffer.resent,
                "confirmed": buffer.confirmed,
                "unconfirmed_from": buffer.unconfirmed()[0] if buffer.depth else None,
                "recovered_pending": len(self.recovered.items),
                "recovered_confirmed": self.recovered.confirmed,
            },
            "collector": {
                "held": collector.held,
                "received": collector.received,
                "duplicates": collector.duplicates,
                "batches_sent": collector.batches_sent,
                "batches_acked": collector.batches_acked,
                "batches_fenced": collector.batches_fenced,
                "discarded": collector.discarded,
            },
        }

    def close(self) -> None:
        self.journal.close()
