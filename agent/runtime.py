"""`meshelect agent`: the asyncio runtime around the sans-IO core.

It owns the I/O the core must not have: sockets (a transport), the clock, sensors, mDNS, the
state dir (boot counter, status file) and signals. Every loop turn it feeds the core what
arrived, ticks it at `node.wakeup`, and sends what it queued; the data path (member buffer ->
leader collector -> gateway, acks back) runs beside it on the same clock.

The clock is monotonic ms that *pauses* while an MQTT broker is unreachable: without a
broker nobody hears anybody, and letting the election time out would make every node claim
and then merge when the broker returns. Pausing keeps the view the nodes had; it resumes when
the leader is heard again (or after a grace period, so a leader that died meanwhile is still
replaced).

Readings also go to a journal in the state dir until the gateway confirmed them, so a kill -9
loses none: the next boot resends what the journal still holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from typing import Any

import cbor2

from agent.config import AgentConfig, ConfigError, load_config
from agent.core import datapath
from agent.core.messages import (
    BATCH,
    BATCH_ACK,
    CLAIM,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    READINGS,
    READINGS_ACK,
    Msg,
)
from agent.core.node import ROLE_DOWN, ROLE_LEADER, ROLE_NAMES, Config, Node
from agent.core.score import Weights
from agent.core.wire import Codec, WireError
from agent.linkquality import LinkQuality
from agent.logs import EventLog
from agent.sensors import SensorHub
from agent.status import write_status
from agent.transport import Transport, format_address, make_transport

ELECTION_KINDS = (HEARTBEAT, CLAIM, HANDOFF, LEAVE)
# A leader polls its collector this often (batches go out every BATCH_MS, 1 s); a member runs
# its buffer when a reading is taken, the leader changes, or a resend falls due.
LEADER_DATAPATH_MS = 200
IDLE_DATAPATH_MS = 1000
DROP_LOG_EVERY_MS = 10000  # one log line per drop reason per 10 s; counters count them all
STOP_REPEATS = 2  # the goodbye (HANDOFF/LEAVE) is sent twice: UDP may lose one
JOURNAL_COMPACT_SLACK = 256  # journal lines beyond twice the held readings before compacting


class PausableClock:
    """Monotonic milliseconds that can be paused (see the module docstring)."""

    def __init__(self) -> None:
        self._origin = time.monotonic()
        self._paused_at: float | None = None
        self._paused_total = 0.0

    def now(self) -> int:
        real = self._paused_at if self._paused_at is not None else time.monotonic()
        return int((real - self._origin - self._paused_total) * 1000)

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None


def next_boot(state_dir: str) -> int:
    """Read, increment and persist the boot counter (atomic rename, fsync'ed)."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, "boot")
    try:
        with open(path) as f:
            boot = int(f.read().strip() or "0")
    except FileNotFoundError:
        boot = 0
    except ValueError:
        raise ConfigError("state_dir", f"{path} is corrupt (not a number)") from None
    boot += 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{boot}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return boot


class ReadingJournal:
    """This boot's unconfirmed readings, mirrored in `<state_dir>/journal-<boot>.jsonl`.

    The data path keeps readings in RAM until the gateway confirms them; a kill -9 or a power
    cut would lose those. So each reading is also appended here (one JSON line: seq, t_ms,
    metrics; written through to the OS, which keeps it when the process is killed; there is
    no fsync per reading, so a power cut can still lose the last few seconds), trimmed to the
    unconfirmed ones as confirmations arrive, and compacted when mostly stale. The next boot
    resends what the journal still holds (see `RecoveredReadings`); the gateway's dedup makes
    a resend of an already stored reading harmless.
    """

    def __init__(self, state_dir: str, boot: int) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, f"journal-{boot}.jsonl")
        self.held: dict[int, tuple[int, dict[str, int]]] = {}
        self.lines = 0
        self._file = open(self.path, "a")  # noqa: SIM115 (kept open for the whole boot)

    def add(self, seq: int, t_ms: int, metrics: dict[str, int]) -> None:
        self.held[seq] = (t_ms, metrics)
        self._file.write(json.dumps([seq, t_ms, metrics], separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def trim(self, first_held: int | None) -> None:
        """Forget what the buffer no longer holds (confirmed, or dropped when full)."""
        for seq in [s for s in self.held if first_held is None or s < first_held]:
            del self.held[seq]
        if self.lines > JOURNAL_COMPACT_SLACK + 2 * len(self.held):
            self._compact()

    def _compact(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for seq in sorted(self.held):
                t_ms, metrics = self.held[seq]
                f.write(json.dumps([seq, t_ms, metrics], separators=(",", ":")) + "\n")
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")  # noqa: SIM115
        self.lines = len(self.held)

    def close(self) -> None:
        self._file.close()
        if not self.held:
            with contextlib.suppress(OSError):
                os.remove(self.path)

    @staticmethod
    def recover(state_dir: str, boot: int, limit: int) -> tuple[list[list[Any]], list[str], int]:
        """Readings that earlier boots journaled and may not have delivered: ([[boot, seq,
        t_ms, metrics], ...] oldest first, at most `limit`), the journal files read, and how
        many older ones did not fit the limit (dropped, like a full buffer drops)."""
        found: list[list[Any]] = []
        paths = []
        try:
            names = sorted(os.listdir(state_dir))
        except OSError:
            return [], [], 0
        for name in names:
            if not (name.startswith("journal-") and name.endswith(".jsonl")):
                continue
            try:
                old_boot = int(name[len("journal-") : -len(".jsonl")])
            except ValueError:
                continue
            if old_boot >= boot:
                continue
            path = os.path.join(state_dir, name)
            paths.append(path)
            seen: dict[int, list[Any]] = {}
            with open(path) as f:
                for line in f:
                    try:
                        seq, t_ms, metrics = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by the kill
                    if isinstance(seq, int) and isinstance(t_ms, int) and isinstance(metrics, dict):
                        seen[seq] = [old_boot, seq, t_ms, metrics]
            found.extend(seen[seq] for seq in sorted(seen))
        return found[-limit:], paths, max(0, len(found) - limit)


class RecoveredReadings:
    """Readings of earlier boots (from their journals), resent until confirmed.

    READINGS carry each reading's own boot, so these travel like any other; confirmations
    come back as ranges of that old boot, which the current buffer ignores and we take here.
    """

    def __init__(self, items: list[list[Any]], paths: list[str]) -> None:
        self.items = {(item[0], item[1]): item for item in items}
        self.paths = paths
        self.sent_at: dict[tuple[int, int], int] = {}
        self.target: tuple[str | None, int] = (None, -1)
        self.confirmed = 0

    def due(self, now: int, leader: str, term: int) -> list[list[Any]]:
        if (leader, term) != self.target:
            self.target = (leader, term)
            self.sent_at.clear()
        out = []
        for key in sorted(self.items):
            if now - self.sent_at.get(key, -datapath.RESEND_MS) >= datapath.RESEND_MS:
                self.sent_at[key] = now
                out.append(self.items[key])
                if len(out) >= datapath.MAX_READINGS_PER_FRAME:
                    break
        return out

    def confirm(self, ranges: Any) -> None:
        if not isinstance(ranges, list):
            return
        for item in ranges:
            if isinstance(item, list) and len(item) == 3 and all(type(v) is int for v in item):
                boot, first, last = item
                for key in [k for k in self.items if k[0] == boot and first <= k[1] <= last]:
                    del self.items[key]
                    self.sent_at.pop(key, None)
                    self.confirmed += 1
        if not self.items:
            for path in self.paths:
                with contextlib.suppress(OSError):
                    os.remove(path)
            self.paths = []


def core_config(cfg: AgentConfig) -> Config:
    try:
        weights = Weights(cfg.weight_battery, cfg.weight_link, cfg.low_battery)
        return Config(
            heartbeat_ms=cfg.heartbeat_ms,
            margin=cfg.margin,
            quorum=cfg.quorum,
            max_peers=cfg.max_peers,
            weights=weights,
            suspect_intervals=cfg.suspect_intervals,
            listen_intervals=cfg.listen_intervals,
        )
    except ValueError as exc:
        raise ConfigError("election", str(exc)) from None


class Agent:
    def __init__(self, cfg: AgentConfig, log: EventLog, boot: int) -> None:
        self.cfg = cfg
        self.log = log
        self.boot = boot
        self.counters: dict[str, int] = {}
        self.clock = PausableClock()
        self.codec = Codec(cfg.mesh, cfg.mesh_key or None, boot=boot)
        seed = cfg.seed or random.randrange(1, 2**31)
        self.node = Node(cfg.node_id, core_config(cfg), boot=boot, seed=seed)
        self.sensors = SensorHub.from_config(cfg.sensors)
        self.linkq = LinkQuality(cfg.heartbeat_ms)
        self.buffer = datapath.ReadingBuffer(cfg.node_id, boot, cfg.buffer_capacity)
        self.collector = datapath.Collector(cfg.node_id, cfg.mesh, cfg.collector_capacity)
        self.transport: Transport = make_transport(cfg, self._on_frame, log)
        items, paths, over = ReadingJournal.recover(cfg.state_dir, boot, cfg.buffer_capacity)
        self.recovered = RecoveredReadings(items, paths)
        if items or over:
            log.info("readings_recovered", count=len(items), dropped=over, journals=len(paths))
            self.count("recovered_dropped", over)
        self.journal = ReadingJournal(cfg.state_dir, boot)
        self.discovery: Any = None
        self._drop_logged: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._seen_role = ROLE_DOWN
        self._seen_leader: str | None = None
        self._seen_term = 0
        self._seen_peers: set[str] = set()
        self._elections: list[list[Any]] = []
        self._batch_sent_at: dict[int, int] = {}
        self._resume_deadline: float | None = None
        self.broker_leader: list[Any] | None = None
        self.frames_in = 0
        self.loop_turns = 0
        self._next_datapath = 0

    # ---- counters and logs -------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _log_drop(self, reason: str, source: Any, detail: str) -> None:
        """A clear line for bad input, rate-limited per reason; the counter counts every one."""
        self.count("dropped_" + reason)
        now = self.clock.now()
        last = self._drop_logged.get(reason)
        if last is None or now - last >= DROP_LOG_EVERY_MS:
            self._drop_logged[reason] = now
            self.log.warning(
                "frame_dropped",
                reason=reason,
                source=format_address(source) if isinstance(source, tuple) else "broker",
                detail=detail,
                total=self.counters["dropped_" + reason],
            )

    # ---- receiving ---------------------------------------------------------------------

    def _on_frame(self, data: bytes, source: Any) -> None:
        """Called by the transport, in the event loop, for every frame that arrived."""
        now = self.clock.now()
        self.frames_in += 1
        try:
            msg = self.codec.decode(data, now)
        except WireError as exc:
            self._log_drop(exc.reason, source, str(exc))
            return
        if msg.sender == self.cfg.node_id:
            self._log_drop("own_id", source, f"another node uses our id {msg.sender!r}")
            return
        self.transport.learn(msg.sender, source)
        kind = msg.kind
        try:
            if kind in ELECTION_KINDS:
                if kind == HEARTBEAT:
                    self.linkq.heard(msg.sender, now)
                self._maybe_resume(msg)
                self.node.receive(msg, now)
            elif kind == READINGS:
                self._on_readings(msg, now)
            elif kind == READINGS_ACK:
                if msg.target == self.cfg.node_id:
                    self.count("readings_confirmed", self.buffer.on_ack(msg))
                    self.recovered.confirm(msg.body)
            elif kind == BATCH_ACK:
                self._on_batch_ack(msg, now)
            elif kind == BATCH:
                self.count("ignored_batch")  # for the gateway; MQTT/UDP may show it to us
        except Exception as exc:  # never let one frame kill the agent
            self.count("frame_errors")
            self.log.error("frame_error", kind=kind, sender=msg.sender, error=repr(exc))
        self._after_core(now)
        self._wake.set()

    def _on_readings(self, msg: Msg, now: int) -> None:
        if msg.target != self.cfg.node_id or self.node.role != ROLE_LEADER:
            # Sent to us as leader, but we are not (any more): the member resends to the new one.
            self.count("readings_not_leader")
            return
        added = self.collector.add(msg)
        self.count("readings_collected", added)

    def _on_batch_ack(self, msg: Msg, now: int) -> None:
        if msg.target != self.cfg.node_id:
            return
        body = msg.body if isinstance(msg.body, list) else []
        if body and isinstance(body[0], int):
            sent_at = self._batch_sent_at.pop(body[0], None)
            if sent_at is not None and self.cfg.transport == "udp":
                self.linkq.rtt_sample(now - sent_at)
        if len(body) == 3 and body[1] == 1:
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
            frame = self._encode(ack)
            if frame is not None:
                self.transport.send_readings_ack(ack.target, frame)

    # ---- sending -----------------------------------------------------------------------

    def _encode(self, msg: Msg) -> bytes | None:
        try:
            frame: bytes = self.codec.encode(msg)
        except WireError as exc:
            self.count("encode_errors")
            self.log.error("encode_failed", kind=msg.kind, error=str(exc))
            return None
        return frame

    def _flush_outbox(self) -> None:
        outbox = self.node.outbox
        for msg in outbox:
            frame = self._encode(msg)
            if frame is not None:
                self.transport.send_election(frame)
        del outbox[:]

    def _after_core(self, now: int) -> None:
        self._flush_outbox()
        node = self.node
        if (
            node.role != self._seen_role
            or node.leader != self._seen_leader
            or node.term != self._seen_term
        ):
            self._on_change(now)

    def _on_change(self, now: int) -> None:
        node = self.node
        was_leader = self._seen_role == ROLE_LEADER
        if node.leader != self._seen_leader or node.role != self._seen_role:
            self.log.info(
                "role_changed",
                role=ROLE_NAMES[node.role],
                term=node.term,
                leader=node.leader or "-",
                reason=node.lead_reason or "-",
            )
        self._seen_role, self._seen_leader, self._seen_term = node.role, node.leader, node.term
        self.sensors.set_leading(node.role == ROLE_LEADER)
        self._next_datapath = 0  # resend to the new leader / start collecting now
        if was_leader and node.role != ROLE_LEADER:
            self.collector.lost_leadership()
            self._batch_sent_at.clear()
        if node.role == ROLE_LEADER and not was_leader:
            self._elections.append([node.term, node.id, node.lead_reason or "start"])
            record = cbor2.dumps([node.term, node.id])
            self.transport.publish_leader(node.term, node.id, record)
        if self.discovery is not None:
            self.discovery.update(ROLE_NAMES[node.role], node.score)

    # ---- the data path -----------------------------------------------------------------

    def _sample(self, now: int) -> None:
        metrics = self.sensors.read(now)
        battery, mains = self.sensors.power(now)
        self.linkq.wifi = self.sensors.wifi_link()
        link = self.linkq.link(now)
        self.node.set_power(battery, link, mains, self.cfg.eligible)
        if not metrics:
            self.count("empty_samples")
            return
        self._next_datapath = 0  # send it now
        t_ms = int(time.time() * 1000)
        try:
            seq = self.buffer.add(t_ms, metrics)
        except ValueError as exc:
            self.count("bad_samples")
            self.log.warning("sample_rejected", error=str(exc))
            return
        try:
            self.journal.add(seq, t_ms, metrics)
        except OSError as exc:  # a full disk must not stop the mesh; RAM still holds it
            self.count("journal_errors")
            self.log.warning("journal_failed", error=str(exc))

    def _members_view(self, now: int) -> list[list[Any]]:
        node = self.node
        rows: list[list[Any]] = [
            [node.id, node.score, node.battery, node.link, _own_flags(node), 0]
        ]
        since = now - node.config.live_ms
        for peer_id in sorted(node.peers.by_id):
            p = node.peers.by_id[peer_id]
            if p.heard >= since:
                rows.append([p.id, p.score, p.battery, p.link, p.flags, max(0, now - p.heard)])
        return rows

    def _run_datapath(self, now: int) -> None:
        node = self.node
        if node.role == ROLE_LEADER:
            self.collector.pull_own(self.buffer, now, node.term)
            if self.recovered.items:
                self.collector.add(self.recovered.due(now, node.id, node.term), node.id)
            elections = self._elections
            self._elections = []
            members = self._members_view(now)
            for _ in range(datapath.MAX_IN_FLIGHT + 1):
                batch = self.collector.due_batch(now, node.term, members, elections)
                elections = []
                if batch is None:
                    break
                frame = self._encode(datapath.batch_message(node.id, node.term, batch))
                if frame is None:
                    continue
                if self.transport.send_batch(frame):
                    self._batch_sent_at[batch["id"]] = now
                    self.count("batches_sent")
                else:
                    self.count("batches_unsent")  # no gateway known yet: resent later
        elif node.leader is not None:
            msgs = (
                self.buffer.due_messages(now, node.leader, node.term)
                if now >= self.buffer.wakeup
                else []
            )
            if self.recovered.items:
                readings = self.recovered.due(now, node.leader, node.term)
                msgs += datapath.make_messages(node.id, node.leader, node.term, readings)
            for msg in msgs:
                frame = self._encode(msg)
                if frame is not None and not self.transport.send_readings(node.leader, frame):
                    self.count("readings_unsent")

    # ---- the broker pause (MQTT) -------------------------------------------------------

    def _on_connection(self, connected: bool) -> None:
        if not connected:
            self.clock.pause()
            self.log.info("clock_paused", why="broker unreachable")
        elif self.clock.paused:
            if self.node.role == ROLE_LEADER or self.node.leader is None:
                self._resume("reconnected")
            else:
                grace = (self.cfg.mqtt.reconnect_max_ms + 2 * self.cfg.heartbeat_ms) / 1000
                self._resume_deadline = time.monotonic() + grace
        self._wake.set()

    def _maybe_resume(self, msg: Msg) -> None:
        if self.clock.paused and self.transport.connected and msg.sender == self.node.leader:
            self._resume("leader heard")

    def _resume(self, why: str) -> None:
        self.clock.resume()
        self._resume_deadline = None
        self.log.info("clock_resumed", why=why)

    def _on_leader_record(self, payload: bytes) -> None:
        try:
            record = cbor2.loads(payload)
        except Exception:
            self.count("bad_leader_record")
            return
        if isinstance(record, list) and len(record) == 2:
            self.broker_leader = record

    # ---- discovery ---------------------------------------------------------------------

    async def _start_discovery(self) -> None:
        from agent.discovery import Discovery

        cfg = self.cfg
        interface = cfg.discovery_interface
        port = 0
        local = getattr(self.transport, "local", None)
        if local is not None:
            interface = interface or local[0]
            port = local[1]
        self.discovery = Discovery(cfg.mesh, cfg.node_id, interface, port or 1, self.log)
        if cfg.gateway is None:
            self.discovery.on_gateway = self.transport.set_gateway
        if cfg.transport == "mqtt" and cfg.mqtt.broker is None:
            self.discovery.on_broker = getattr(self.transport, "set_broker", None)
        try:
            await self.discovery.start(ROLE_NAMES[self.node.role], self.node.score)
        except Exception as exc:  # no multicast route, etc.: the mesh still works
            self.log.warning("mdns_unavailable", error=str(exc))
            self.discovery = None

    # ---- status ------------------------------------------------------------------------

    def status(self, now: int) -> dict[str, Any]:
        node = self.node
        peers = []
        for peer_id in sorted(node.peers.by_id):
            p = node.peers.by_id[peer_id]
            peers.append(
                {
                    "id": p.id,
                    "score": p.score,
                    "battery": p.battery,
                    "link": p.link,
                    "term": p.term,
                    "flags": p.flags,
                    "age_ms": max(0, now - p.heard),
                }
            )
        buffer = self.buffer
        collector = self.collector
        return {
            "node": node.id,
            "mesh": self.cfg.mesh,
            "pid": os.getpid(),
            "boot": self.boot,
            "updated": time.time(),
            "clock_ms": now,
            "clock_paused": self.clock.paused,
            "role": ROLE_NAMES[node.role],
            "term": node.term,
            "leader": node.leader,
            "lead_reason": node.lead_reason,
            "score": node.score,
            "battery": node.battery,
            "link": node.link,
            "mains": node.mains,
            "peers": peers,
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
            "drops": {k: v for k, v in self.codec.drops.items() if v},
            "counters": dict(self.counters),
            "events": dict(self.log.counts),
            "transport": self.transport.describe(),
            "gateway": self.transport.describe().get("gateway"),
            "broker_leader": self.broker_leader,
            "mdns_peers": sorted(self.discovery.peers) if self.discovery is not None else [],
            "stats": {
                "sent": node.stats_sent,
                "terms_started": node.stats_terms_started,
                "suspicions": node.stats_suspicions,
                "handoffs": node.stats_handoffs,
                "frames_in": self.frames_in,
                "loop_turns": self.loop_turns,
            },
        }

    def _write_status(self, now: int) -> None:
        held = self.buffer.unconfirmed()
        try:
            self.journal.trim(held[0] if held else None)
        except OSError as exc:
            self.count("journal_errors")
            self.log.warning("journal_failed", error=str(exc))
        try:
            write_status(self.cfg.state_dir, self.status(now))
        except OSError as exc:
            self.count("status_write_errors")
            self.log.warning("status_write_failed", error=str(exc))
        live = set(self.node.peers.by_id)
        for gone in sorted(self._seen_peers - live):
            self.log.info("peer_left", peer=gone)
            self.linkq.forget(gone)
        for new in sorted(live - self._seen_peers):
            self.log.info("peer_joined", peer=new)
        self._seen_peers = live

    # ---- the loop ----------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        cfg = self.cfg
        if cfg.transport == "mqtt":
            mqtt_transport: Any = self.transport
            mqtt_transport.on_connection = self._on_connection
            mqtt_transport.on_leader_record = self._on_leader_record
            mqtt_transport.on_rtt = self.linkq.rtt_sample
            # No broker yet: nothing can be heard, so the election clock waits for it.
            self.clock.pause()
        await self.transport.start()
        if cfg.gateway is not None:
            self.transport.set_gateway(cfg.gateway)
        now = self.clock.now()
        self._sample(now)
        self.node.start(now)
        self._after_core(now)
        if cfg.discovery:
            await self._start_discovery()  # after start: the TXT record shows a real role
        self.log.info(
            "agent_started",
            mesh=cfg.mesh,
            boot=self.boot,
            transport=cfg.transport,
            heartbeat_ms=cfg.heartbeat_ms,
            score=self.node.score,
        )
        # Sampling and status follow real time; the core and the data path the pausable clock.
        next_sample = _real_ms() + cfg.sample_ms
        next_status = _real_ms()
        self._next_datapath = now
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                self.loop_turns += 1
                if self._resume_deadline is not None and time.monotonic() >= self._resume_deadline:
                    self._resume("grace period over")
                now = self.clock.now()
                real = _real_ms()
                if real >= next_sample:
                    self._sample(now)
                    self._after_core(now)
                    next_sample = real + cfg.sample_ms
                if not self.clock.paused:
                    if now >= self.node.wakeup:
                        self.node.tick(now)
                        self._after_core(now)
                    if now >= self._next_datapath:
                        self._run_datapath(now)
                        self._next_datapath = self._datapath_due(now)
                if real >= next_status:
                    self._write_status(now)
                    next_status = real + cfg.status_ms
                delay_ms = min(next_sample, next_status) - _real_ms()
                if not self.clock.paused:
                    core_deadline = min(self.node.wakeup, self._next_datapath)
                    delay_ms = min(delay_ms, core_deadline - self.clock.now())
                self._wake.clear()
                # A plain timer, not wait_for: no task per turn (this loop turns ~20 times/s).
                timer = loop.call_later(max(1, delay_ms) / 1000, self._wake.set)
                await self._wake.wait()
                timer.cancel()
        finally:
            await self._shutdown()

    def _datapath_due(self, now: int) -> int:
        node = self.node
        if node.role == ROLE_LEADER:
            return now + LEADER_DATAPATH_MS
        if node.leader is None:
            return now + IDLE_DATAPATH_MS
        return max(now + 1, min(self.buffer.wakeup, now + IDLE_DATAPATH_MS))

    async def _shutdown(self) -> None:
        now = self.clock.now()
        was_leader = self.node.role == ROLE_LEADER
        self.node.stop(now)
        goodbye = list(self.node.outbox)
        del self.node.outbox[:]
        for repeat in range(STOP_REPEATS):
            for msg in goodbye:
                frame = self._encode(msg)
                if frame is not None:
                    self.transport.send_election(frame)
            if repeat + 1 < STOP_REPEATS:
                await asyncio.sleep(0.02)
        self.log.info(
            "agent_stopping",
            handoff_to=next((m.target for m in goodbye if m.kind == HANDOFF), None) or "-",
            was_leader=was_leader,
        )
        await asyncio.sleep(0.05)  # let the datagrams leave before the socket closes
        if self.discovery is not None:
            await self.discovery.stop()
        await self.transport.stop()
        self.journal.close()
        self._write_status(self.clock.now())


def _real_ms() -> int:
    return int(time.monotonic() * 1000)


def _own_flags(node: Node) -> int:
    flags = 0
    if node.role == ROLE_LEADER:
        flags |= 1
    if node.mains:
        flags |= 4
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshelect agent", description="Run a meshelect agent.")
    parser.add_argument("--config", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--log-format", choices=("text", "json"), help="override log_format")
    parser.add_argument("--state-dir", help="override state_dir")
    parser.add_argument("--node-id", help="override node_id")
    return parser


async def _main(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    await agent.run()


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.log_format:
            cfg.log_format = args.log_format
        if args.state_dir:
            cfg.state_dir = args.state_dir
        if args.node_id:
            if not 1 <= len(args.node_id.encode()) <= 16:
                raise ConfigError("node_id", "must be 1..16 bytes of UTF-8")
            cfg.node_id = args.node_id
        boot = next_boot(cfg.state_dir)
        log = EventLog(cfg.node_id, cfg.log_format, min_level=cfg.log_level)
        agent = Agent(cfg, log, boot)
    except ConfigError as exc:
        print(f"meshelect agent: config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"meshelect agent: state dir: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(agent))
    except OSError as exc:
        log.error("agent_failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
