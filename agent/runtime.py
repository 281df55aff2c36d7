"""`meshelect agent`: the asyncio runtime around the sans-IO core.

It owns the I/O the core must not have: sockets (a transport), the clock, sensors, mDNS, the
state dir (boot counter, status file, readings journal) and signals. Every loop turn it feeds
the core what arrived, ticks it at `node.wakeup`, and sends what it queued; the data path
(member buffer -> leader collector -> gateway, acks back) runs beside it on the same clock.

The clock (agent/clock.py) *pauses* while an MQTT broker is unreachable: without a broker
nobody hears anybody, and letting the election time out would make every node claim and then
merge when the broker returns. Pausing keeps the view the nodes had; it resumes when the
leader is heard again (or after a grace period, so a leader that died meanwhile is still
replaced).

Readings also go to a journal in the state dir (agent/journal.py) until the gateway confirmed
them, so a kill -9 loses none: the next boot resends what the journal still holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
from typing import Any

import cbor2

from agent import strict_cbor
from agent.clock import PausableClock, real_ms
from agent.config import AgentConfig, ConfigError, load_config
from agent.core.batchcheck import check_batch
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
from agent.core.node import MAX_NODE_ID_BYTES, ROLE_DOWN, ROLE_LEADER, ROLE_NAMES, Config, Node
from agent.core.score import Weights
from agent.core.wire import Codec, WireError
from agent.datadriver import DataPathDriver
from agent.linkquality import LinkQuality
from agent.logs import EventLog
from agent.sensors import SensorHub
from agent.status import REFRESH_MS, settled_view, write_status
from agent.transport import Transport, format_address, make_transport

ELECTION_KINDS = (HEARTBEAT, CLAIM, HANDOFF, LEAVE)
DROP_LOG_EVERY_MS = 10000  # one log line per drop reason per 10 s; counters count them all
STOP_REPEATS = 2  # the goodbye (HANDOFF/LEAVE) is sent twice: UDP may lose one


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
        # As a leader it checks its own batches with the gateway's schema before they go out.
        self.codec = Codec(
            cfg.mesh,
            cfg.mesh_key or None,
            strict_cbor.dumps,
            strict_cbor.loads,
            boot=boot,
            check_batch=check_batch,
        )
        seed = cfg.seed or random.randrange(1, 2**31)
        self.node = Node(cfg.node_id, core_config(cfg), boot=boot, seed=seed)
        self.sensors = SensorHub.from_config(cfg.sensors)
        self.linkq = LinkQuality(cfg.heartbeat_ms)
        self.transport: Transport = make_transport(cfg, self._on_frame, log)
        self.data = DataPathDriver(
            cfg,
            boot,
            self.node,
            self.transport,
            self._encode,
            self.count,
            log,
            batch_rtt=self.linkq.rtt_sample if cfg.transport == "udp" else None,
        )
        self.discovery: Any = None
        self._drop_logged: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._seen_role = ROLE_DOWN
        self._seen_leader: str | None = None
        self._seen_term = 0
        self._seen_peers: set[str] = set()
        self._resume_deadline: float | None = None
        self.broker_leader: list[Any] | None = None
        self.frames_in = 0
        self.loop_turns = 0
        self._status_view: dict[str, Any] | None = None
        self._status_written = 0
        # What the loop sleeps until on the (pausable) clock; None: paused or not asleep.
        self._sleep_deadline: int | None = None

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
                self.data.on_readings(msg)
            elif kind == READINGS_ACK:
                self.data.on_readings_ack(msg)
            elif kind == BATCH_ACK:
                self.data.on_batch_ack(msg, now)
            elif kind == BATCH:
                self.count("ignored_batch")  # for the gateway; MQTT/UDP may show it to us
        except Exception as exc:  # never let one frame kill the agent
            self.count("frame_errors")
            self.log.error("frame_error", kind=kind, sender=msg.sender, error=repr(exc))
        self._after_core(now)
        self._wake_if_sooner()

    def _wake_if_sooner(self) -> None:
        """Wake the loop only if a frame moved a deadline before the one it sleeps until:
        most frames (heartbeats) change nothing it waits for, and a loop turn per frame was
        half of an idle agent's loop turns."""
        deadline = self._sleep_deadline
        if deadline is None or min(self.node.wakeup, self.data.next_due) < deadline:
            self._wake.set()

    # ---- sending -----------------------------------------------------------------------

    def _encode(self, msg: Msg) -> bytes | None:
        try:
            frame = bytes(self.codec.encode(msg))  # already bytes with strict_cbor: no copy
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
        self.data.on_role_change(was_leader)
        if node.role == ROLE_LEADER and not was_leader:
            record = cbor2.dumps([node.term, node.id])
            self.transport.publish_leader(node.term, node.id, record)
        if self.discovery is not None:
            self.discovery.update(ROLE_NAMES[node.role], node.score)

    # ---- sensors and the members view (the data path itself: agent/datadriver.py) ------

    def _sample(self, now: int) -> None:
        metrics = self.sensors.read(now)
        battery, mains = self.sensors.power(now)
        self.linkq.wifi = self.sensors.wifi_link()
        link = self.linkq.link(now)
        self.node.set_power(battery, link, mains, self.cfg.eligible)
        if not metrics:
            self.count("empty_samples")
            return
        self.data.take(metrics)

    def members_view(self, now: int) -> list[list[Any]]:
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
            **self.data.status(),
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

    def _write_status(self, now: int, force: bool = False) -> None:
        try:
            self.data.trim_journal()
        except OSError as exc:
            self.count("journal_errors")
            self.log.warning("journal_failed", error=str(exc))
        status = self.status(now)
        view = settled_view(status)
        real = real_ms()
        # Unchanged but for the ever-moving figures: skip the write until REFRESH_MS (see
        # agent/status.py); an idle agent then writes ~1/s instead of every status_ms.
        if force or view != self._status_view or real - self._status_written >= REFRESH_MS:
            try:
                write_status(self.cfg.state_dir, status)
                self._status_view = view
                self._status_written = real
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
        next_sample = real_ms() + cfg.sample_ms
        next_status = real_ms()
        self.data.next_due = now
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                self.loop_turns += 1
                if self._resume_deadline is not None and time.monotonic() >= self._resume_deadline:
                    self._resume("grace period over")
                now = self.clock.now()
                real = real_ms()
                if real >= next_sample:
                    self._sample(now)
                    self._after_core(now)
                    next_sample = real + cfg.sample_ms
                if not self.clock.paused:
                    if now >= self.node.wakeup:
                        self.node.tick(now)
                        self._after_core(now)
                    if now >= self.data.next_due:
                        self.data.run(now, self.members_view)
                if real >= next_status:
                    self._write_status(now)
                    next_status = real + cfg.status_ms
                delay_ms = min(next_sample, next_status) - real_ms()
                self._sleep_deadline = None
                if not self.clock.paused:
                    core_deadline = min(self.node.wakeup, self.data.next_due)
                    delay_ms = min(delay_ms, core_deadline - self.clock.now())
                    self._sleep_deadline = core_deadline
                self._wake.clear()
                # A plain timer, not wait_for: no task per turn (this loop turns ~10 times/s).
                timer = loop.call_later(max(1, delay_ms) / 1000, self._wake.set)
                await self._wake.wait()
                self._sleep_deadline = None
                timer.cancel()
        finally:
            await self._shutdown()

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
        self._write_status(self.clock.now(), force=True)  # trims the journal one last time
        self.data.close()


def _own_flags(node: Node) -> int:
    flags = 0
    if node.role == ROLE_LEADER:
        flags |= 1
    if node.mains:
        flags |= 4
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshelect agent", description="Run a meshelect agent.")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file, see examples/agent.toml (default: none; every setting takes "
        "its built-in default)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log line format; overrides log_format (default: the config's, else text)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="boot counter, status file and readings journal; overrides state_dir "
        "(default: the config's, else /var/lib/meshelect)",
    )
    parser.add_argument(
        "--node-id",
        metavar="ID",
        help="this node's id, 1..16 bytes; overrides node_id (default: the config's, else "
        "the host name)",
    )
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
            if not 1 <= len(args.node_id.encode()) <= MAX_NODE_ID_BYTES:
                raise ConfigError("node_id", "must be 1..%d bytes of UTF-8" % MAX_NODE_ID_BYTES)
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
