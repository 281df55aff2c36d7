"""`meshelect agent`: the asyncio shell around the node application (agent/core/app.py).

The app does everything a node does with frames: election, data path, wire codec, the
election clock. This shell owns the I/O the app must not have: sockets (a transport), the
clock, sensors, mDNS, the state dir (boot counter, status file, readings journal), logs and
signals. Every loop turn it feeds the app what arrived, ticks it at `app.wakeup`, sends what
it queued and acts on its events: log lines, the MQTT leader record, mDNS, the sensors'
leader drain, link-quality samples.

Over MQTT the app stops its election clock while the broker is unreachable (nobody hears
anybody then; see agent/core/app.py): the shell tells it when the broker goes and comes back.

Energy: the app counts frames and the time in each role (agent/core/energy.py); the agent
sends the report as a reading every `[energy] report_ms`. A sleepy member (`[sleep]`,
agent/core/sleepy.py) dozes between wakes: the process stays, with its radio notionally off
(frames that arrive meanwhile are dropped unread, nothing is sent, the node is down), for
`sleep.interval_ms`; at each wake it starts the node again, takes one reading and its energy
report, and dozes again when the sleep cycle says so. Its readings stay in memory (and in the
journal) across dozes, in the same boot.

Readings also go to a journal in the state dir (agent/journal.py) until the gateway confirmed
them, so a kill -9 loses none: the next boot resends what the journal still holds (the app
carries those readings as its `backlog`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from typing import Any

import cbor2

from agent import strict_cbor
from agent.config import AgentConfig, ConfigError, load_config
from agent.core import datapath, energyreport, wire
from agent.core.app import DEST_GATEWAY, DEST_MESH, NodeApp, make_config
from agent.core.batchcheck import check_batch
from agent.core.energy import Energy
from agent.core.messages import ACK_FENCED, HANDOFF, HEARTBEAT, READINGS
from agent.core.node import MAX_NODE_ID_BYTES, ROLE_LEADER, ROLE_NAMES, Config
from agent.core.sleepy import SleepCycle
from agent.journal import ReadingJournal, RecoveredReadings
from agent.linkquality import LinkQuality
from agent.logs import EventLog
from agent.sensors import SensorHub
from agent.status import REFRESH_MS, settled_view, write_status
from agent.termfile import load_term, save_term, write_number
from agent.transport import Transport, format_address, make_transport

DROP_LOG_EVERY_MS = 10000  # one log line per drop reason per 10 s; counters count them all
STOP_SPACING_S = 0.02  # the goodbye goes out twice (the app's two frames), this far apart
BATCHES_TIMED = 8  # batches whose send time is kept for a round-trip sample (UDP)
NO_CLOCK_ENV = "MESHELECT_AGENT_TEST_NO_CLOCK"  # tests: boot ids as without a valid clock
# mDNS finds a gateway on the LAN within a second or two: one still unknown this long after
# the start is worth one log line (a leader's batches wait meanwhile).
GATEWAY_GRACE_MS = 5000


def next_boot(state_dir: str, unix_s: float | None = None) -> int:
    """Read, grow and persist the boot counter (atomic rename, fsync'ed).

    The new boot is ``wire.next_boot``'s: above the stored one, and at least the seconds since
    2024 when the wall clock is valid, so a wiped state dir never brings old boot ids back.
    """
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, "boot")
    try:
        with open(path) as f:
            boot = int(f.read().strip() or "0")
    except FileNotFoundError:
        boot = 0
    except ValueError:
        raise ConfigError("state_dir", f"{path} is corrupt (not a number)") from None
    boot = wire.next_boot(boot, time.time() if unix_s is None else unix_s)
    write_number(path, boot)
    return boot


def core_config(cfg: AgentConfig) -> Config:
    """The core's Config from the agent's [election] and [score] settings (the app's
    mapping, agent/core/app.py `make_config`)."""
    election = {
        "margin": cfg.margin,
        "quorum": cfg.quorum,
        "max_peers": cfg.max_peers,
        "suspect_intervals": cfg.suspect_intervals,
        "listen_intervals": cfg.listen_intervals,
        "probes": cfg.probes,
        "probe_ms": cfg.probe_ms,
    }
    score = {"battery": cfg.weight_battery, "link": cfg.weight_link, "low_battery": cfg.low_battery}
    try:
        config: Config = make_config(cfg.heartbeat_ms, election, score)
    except ValueError as exc:
        raise ConfigError("election", str(exc)) from None
    return config


class Agent:
    def __init__(self, cfg: AgentConfig, log: EventLog, boot: int) -> None:
        self.cfg = cfg
        self.log = log
        self.boot = boot
        self.counters: dict[str, int] = {}
        self._origin = time.monotonic()
        mqtt = cfg.transport == "mqtt"
        self.app = NodeApp(
            cfg.node_id,
            cfg.mesh,
            cfg.mesh_key or None,
            boot,
            strict_cbor.dumps,
            strict_cbor.loads,
            config=core_config(cfg),
            seed=cfg.seed or random.randrange(1, 2**31),
            buffer_size=cfg.buffer_capacity,
            collector_size=cfg.collector_capacity,
            # A Pi is no board: 4 KB batches, two in flight, and it checks the batches it
            # sends (and would read) like the gateway does.
            max_frame_bytes=datapath.BATCH_FRAME_BYTES,
            max_in_flight=datapath.MAX_IN_FLIGHT,
            check_batch=check_batch,
            clock_paused=mqtt,  # no broker yet: nothing can be heard
            term=load_term(cfg.state_dir),  # the first claim goes above it
            # Random bits in every batch id: the gateway's ack must echo them (docs/security.md).
            token=int.from_bytes(os.urandom(4), "big"),
        )
        self.energy = Energy(self.now(), cfg.energy, sleepy=cfg.sleep is not None)
        self.app.energy = self.energy
        self.cycle = SleepCycle(cfg.sleep) if cfg.sleep is not None else None
        self._dozing = False  # a sleepy member between wakes: radio off
        self.app.needs_address = not mqtt  # UDP: readings go to where the leader's frames came from
        self.app.gateway_known = mqtt  # MQTT: the gateway subscribes to the batch topic
        self.sensors = SensorHub.from_config(cfg.sensors)
        self.linkq = LinkQuality(cfg.heartbeat_ms)
        self.transport: Transport = make_transport(cfg, self._on_frame, log)
        self.recovered = self._recover_journals()
        self.app.backlog = self.recovered
        self.journal = ReadingJournal(cfg.state_dir, boot, cfg.buffer_capacity)
        self.discovery: Any = None
        self._drop_logged: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._seen_peers: set[str] = set()
        self._batch_sent: dict[Any, int] = {}  # batch id -> when it went out (UDP round trips)
        self.broker_leader: list[Any] | None = None
        self.frames_in = 0
        self.loop_turns = 0
        self._gateway_checked = False  # whether the grace for finding a gateway is over
        self._status_view: dict[str, Any] | None = None
        self._status_written = 0
        # What the loop sleeps until (the app's wakeup); None: not asleep.
        self._sleep_deadline: int | None = None

    def now(self) -> int:
        """Monotonic ms since the agent started: the clock the app and the loop run on."""
        return int((time.monotonic() - self._origin) * 1000)

    # ---- counters and logs -------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def _log_drop(self, reason: str, source: Any, detail: str) -> None:
        """A clear line for bad input, rate-limited per reason; the counter counts every one."""
        self.count("dropped_" + reason)
        now = self.now()
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

    def _recover_journals(self) -> RecoveredReadings:
        cfg = self.cfg
        found = ReadingJournal.recover(cfg.state_dir, self.boot, cfg.buffer_capacity)
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

    # ---- the app: frames in, frames and events out ---------------------------------------

    def _on_frame(self, data: bytes, source: Any) -> None:
        """Called by the transport, in the event loop, for every frame that arrived."""
        if self._dozing:
            return  # the radio is off: nothing is heard
        now = self.now()
        self.frames_in += 1
        msg = self.app.frame(data, source, now)
        if msg is not None and msg.kind == HEARTBEAT:
            self.linkq.heard(msg.sender, self.app.clock_ms(now))
        self._flush(now)
        self._wake_if_sooner()

    def _wake_if_sooner(self) -> None:
        """Wake the loop only if a frame moved the app's wakeup before the time the loop sleeps
        until: most frames (heartbeats) change nothing it waits for, and a loop turn per frame
        was half of an idle agent's loop turns."""
        deadline = self._sleep_deadline
        if deadline is None or self.app.wakeup < deadline:
            self._wake.set()

    def _flush(self, now: int) -> None:
        """Send what the app queued, then act on its events."""
        app = self.app
        transport = self.transport
        for dest, name, kind, frame in app.out:
            if dest == DEST_MESH:
                transport.send_election(frame)
            elif dest == DEST_GATEWAY:
                if transport.send_batch(frame):
                    self.count("batches_sent")
                    self._batch_sent[name] = now
                    if len(self._batch_sent) > BATCHES_TIMED:
                        del self._batch_sent[min(self._batch_sent)]
                else:
                    self.count("batches_unsent")  # resent by the collector
            elif not transport.send_to(name, kind, frame, app.address(name)) and kind == READINGS:
                self.count("readings_unsent")  # resent by the data path
        del app.out[:]
        for event in app.events:
            self._on_event(event, now)
        del app.events[:]

    def _on_event(self, event: tuple[Any, ...], now: int) -> None:
        kind = event[0]
        if kind in ("role", "term"):
            _, role, term, leader, reason, was = event
            if kind == "role":
                self.log.info(
                    "role_changed",
                    role=ROLE_NAMES[role],
                    term=term,
                    leader=leader or "-",
                    reason=reason or "-",
                )
            if was == ROLE_LEADER and role != ROLE_LEADER:
                self._batch_sent.clear()
            self.sensors.set_leading(role == ROLE_LEADER)
            if role == ROLE_LEADER:  # newly leading, or leading in a new term
                record = cbor2.dumps([term, self.cfg.node_id])
                self.transport.publish_leader(term, self.cfg.node_id, record)
            if self.discovery is not None:
                self.discovery.update(ROLE_NAMES[role], self.app.node.score)
        elif kind == "max_term":
            try:
                save_term(self.cfg.state_dir, event[1])
            except OSError as exc:
                self.count("term_save_errors")
                self.log.warning("term_save_failed", error=str(exc))
        elif kind == "clock_paused":
            self.log.info("clock_paused" if event[1] else "clock_resumed", why=event[2])
        elif kind == "confirmed":
            self.count("readings_confirmed", event[1])
        elif kind == "batch_ack":
            _, batch_id, status, highest_term = event
            sent = self._batch_sent.pop(batch_id, None)
            if sent is not None and self.cfg.transport == "udp":
                self.linkq.rtt_sample(now - sent)  # a batch's ack time says how good our link is
            if status == ACK_FENCED:
                self.log.warning(
                    "batch_fenced",
                    batch=batch_id,
                    highest_term=highest_term,
                    term=self.app.node.term,
                )
        elif kind == "dropped":
            _, reason, source, error = event
            if error is None:  # our own id, not looped back by our transport
                detail = f"another node uses our id {self.cfg.node_id!r}"
            else:
                detail = str(error)
            self._log_drop(reason, source, detail)
        elif kind == "error":
            _, what, error, msg = event
            if what == "sample":
                self.count("bad_samples")
                self.log.warning("sample_rejected", error=str(error))
            elif what == "encode":
                self.count("encode_errors")
                self.log.error("encode_failed", kind=msg.kind, error=str(error))
            else:  # never let one frame kill the agent: the app caught it
                self.count("frame_errors")
                self.log.error(
                    "frame_error",
                    kind=msg.kind if msg is not None else "-",
                    sender=msg.sender if msg is not None else "-",
                    error=repr(error),
                )

    # ---- sensors -----------------------------------------------------------------------

    def _sample(self, now: int) -> None:
        # Sensors and link quality follow the election clock (it stops with an MQTT broker).
        t = self.app.clock_ms(now)
        metrics = self.sensors.read(t)
        battery, mains = self.sensors.power(t)
        self.linkq.wifi = self.sensors.wifi_link()
        self.app.set_power(battery, self.linkq.link(t), mains, self.cfg.eligible)
        if not metrics:
            self.count("empty_samples")
            return
        t_ms = int(time.time() * 1000)  # readings carry wall time, for the gateway
        seq = self.app.sample(now, t_ms, metrics)
        if seq is not None:
            try:
                self.journal.add(seq, t_ms, metrics)
            except OSError as exc:  # a full disk must not stop the mesh; RAM still holds it
                self.count("journal_errors")
                self.log.warning("journal_failed", error=str(exc))
        self._flush(now)

    # ---- the broker (MQTT) ------------------------------------------------------------------

    def _on_connection(self, connected: bool) -> None:
        now = self.now()
        self.app.connected(now, connected, self.cfg.mqtt.reconnect_max_ms)
        self._flush(now)
        self._wake.set()

    def _on_leader_record(self, payload: bytes) -> None:
        try:
            record = cbor2.loads(payload)
        except Exception:
            self.count("bad_leader_record")
            return
        if isinstance(record, list) and len(record) == 2:
            self.broker_leader = record

    # ---- discovery ---------------------------------------------------------------------

    def _set_gateway(self, address: tuple[str, int] | None) -> None:
        """Where batches go (UDP; from the config or mDNS): the app sends them once known."""
        self.transport.set_gateway(address)
        if self.cfg.transport == "udp":
            self.app.gateway_known = self.transport.describe().get("gateway") is not None

    def _check_gateway(self, now: int) -> None:
        """Once, GATEWAY_GRACE_MS after the start: say so if no gateway is known. Finding one
        (or losing it) is logged where it happens: agent/discovery.py, agent/transport/udp.py.
        Over MQTT the gateway listens on the broker: nothing to find."""
        if self._gateway_checked or now < GATEWAY_GRACE_MS:
            return
        self._gateway_checked = True
        if self.app.gateway_known:
            return
        if self.discovery is not None:
            how = "still looking by mDNS (or set [gateway] address)"
        else:
            how = "set [gateway] address, or enable [discovery] to find one by mDNS"
        self.log.warning("gateway_not_found", after_ms=now, batches="held until one is", how=how)

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
            self.discovery.on_gateway = self._set_gateway
        if cfg.transport == "mqtt" and cfg.mqtt.broker is None:
            self.discovery.on_broker = getattr(self.transport, "set_broker", None)
        node = self.app.node
        try:
            await self.discovery.start(ROLE_NAMES[node.role], node.score)
        except Exception as exc:  # no multicast route, etc.: the mesh still works
            self.log.warning("mdns_unavailable", error=str(exc))
            self.discovery = None

    # ---- status ------------------------------------------------------------------------

    def status(self, now: int) -> dict[str, Any]:
        """The app's status (the layout every runtime writes) with the agent's own figures."""
        status: dict[str, Any] = self.app.status(now)
        transport = self.transport.describe()
        status.update(
            pid=os.getpid(),
            updated=time.time(),
            counters=dict(self.counters),
            events=dict(self.log.counts),
            transport=transport,
            gateway=transport.get("gateway"),
            broker_leader=self.broker_leader,
            mdns_peers=sorted(self.discovery.peers) if self.discovery is not None else [],
        )
        status["buffer"]["recovered_pending"] = len(self.recovered.items)
        status["buffer"]["recovered_confirmed"] = self.recovered.confirmed
        status["stats"]["frames_in"] = self.frames_in
        status["stats"]["loop_turns"] = self.loop_turns
        return status

    def _write_status(self, now: int, force: bool = False) -> None:
        try:
            held = self.app.buffer.unconfirmed()
            self.journal.trim(held[0] if held else None)  # forget what the buffer let go
        except OSError as exc:
            self.count("journal_errors")
            self.log.warning("journal_failed", error=str(exc))
        status = self.status(now)
        view = settled_view(status)
        # Unchanged but for the ever-moving figures: skip the write until REFRESH_MS (see
        # agent/status.py); an idle agent then writes ~1/s instead of every status_ms.
        if force or view != self._status_view or now - self._status_written >= REFRESH_MS:
            try:
                write_status(self.cfg.state_dir, status)
                self._status_view = view
                self._status_written = now
            except OSError as exc:
                self.count("status_write_errors")
                self.log.warning("status_write_failed", error=str(exc))
        live = set(self.app.node.peers.by_id)
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
        app = self.app
        if cfg.transport == "mqtt":
            mqtt_transport: Any = self.transport
            mqtt_transport.on_connection = self._on_connection
            mqtt_transport.on_leader_record = self._on_leader_record
            mqtt_transport.on_rtt = self.linkq.rtt_sample
        await self.transport.start()
        if cfg.gateway is not None:
            self._set_gateway(cfg.gateway)
        now = self.now()
        self._sample(now)
        if self.cycle is not None:
            # Before the start: the heartbeat that announces the node says F_SLEEPY (a leader
            # lists it as sleepy before its readings tell the interval).
            self.cycle.wake(app, app.clock_ms(now))
        app.start(now)
        self._flush(now)
        if cfg.discovery:
            await self._start_discovery()  # after start: the TXT record shows a real role
        self.log.info(
            "agent_started",
            mesh=cfg.mesh,
            boot=self.boot,
            transport=cfg.transport,
            heartbeat_ms=cfg.heartbeat_ms,
            score=app.node.score,
        )
        next_sample = now + cfg.sample_ms
        next_status = now
        report_ms = self.energy.settings[8]  # [energy] report_ms
        next_energy = now + report_ms if report_ms else None
        cycle = self.cycle
        if cycle is not None:
            next_sample = self._woke(now)
            next_energy = None
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                self.loop_turns += 1
                now = self.now()
                if cycle is not None and cycle.due(app, app.clock_ms(now)):
                    await self._doze(cycle.interval_ms)
                    if self._stopping.is_set():
                        break  # no wake's readings: they could only wait in the journal
                    next_sample = self._woke(self.now())
                    continue
                if now >= next_sample:
                    self._sample(now)
                    next_sample = now + cfg.sample_ms
                if next_energy is not None and now >= next_energy:
                    self._report_energy(now)
                    next_energy = now + report_ms
                if now >= app.wakeup:
                    app.tick(now)
                    self._flush(now)
                if now >= next_status:
                    self._write_status(now)
                    self._check_gateway(now)
                    next_status = now + cfg.status_ms
                deadline = min(next_sample, next_status, app.wakeup)
                self._sleep_deadline = app.wakeup
                self._wake.clear()
                # A plain timer, not wait_for: no task per turn (this loop turns ~10 times/s).
                timer = loop.call_later(max(1, deadline - self.now()) / 1000, self._wake.set)
                await self._wake.wait()
                self._sleep_deadline = None
                timer.cancel()
        finally:
            await self._shutdown()

    def _report_energy(self, now: int) -> None:
        """The energy report, as a reading (agent/core/energy.py)."""
        reading = energyreport.reading(self.energy, self.app.clock_ms(now))
        t_ms = int(time.time() * 1000)
        seq = self.app.sample(now, t_ms, reading)
        if seq is not None:
            try:
                self.journal.add(seq, t_ms, reading)
            except OSError:
                self.count("journal_errors")
        self._flush(now)

    def _woke(self, now: int) -> int:
        """A sleepy member's wake began (the node started): its reading and energy report;
        returns when it samples next (not in this wake)."""
        assert self.cycle is not None
        self.cycle.wake(self.app, self.app.clock_ms(now))
        self._sample(now)
        self._report_energy(now)
        return now + 10 * self.cycle.interval_ms

    async def _doze(self, interval_ms: int) -> None:
        """A sleepy member sleeps: the node goes down silently (no goodbye: it is still a
        member), the radio is off for ``interval_ms``, then the node starts again (a stop
        ends the doze early: the node starts only to say its goodbye)."""
        app = self.app
        energy = self.energy
        now = self.now()
        app.node.crash()
        app.tick(now)  # the app takes the node's "down"
        del app.out[:]
        self._flush(now)
        self._dozing = True
        self.log.info("dozing", ms=interval_ms, held=app.buffer.depth)
        dozed = app.clock_ms(now)
        energy.tick(dozed)  # awake until now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), interval_ms / 1000)
        self._dozing = False
        now = self.now()
        woke = app.clock_ms(now)
        energyreport.restore(energy, None, woke - dozed)  # asleep since, in deep sleep's current
        energy.since = woke
        app.start(now)
        self._flush(now)

    async def _shutdown(self) -> None:
        app = self.app
        now = self.now()
        was_leader = app.node.role == ROLE_LEADER
        app.stop(now)
        goodbye = [(name, kind, frame) for dest, name, kind, frame in app.out if dest == DEST_MESH]
        del app.out[:]
        for i, (_, _, frame) in enumerate(goodbye):
            if i:
                await asyncio.sleep(STOP_SPACING_S)
            self.transport.send_election(frame)
        self._flush(now)  # its events: the last role change
        self.log.info(
            "agent_stopping",
            handoff_to=next((name for name, kind, _ in goodbye if kind == HANDOFF), None) or "-",
            was_leader=was_leader,
        )
        await asyncio.sleep(0.05)  # let the datagrams leave before the socket closes
        if self.discovery is not None:
            await self.discovery.stop()
        await self.transport.stop()
        self._write_status(self.now(), force=True)  # trims the journal one last time
        self.journal.close()


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
        # Test hook (inert unless set): start as a Pi without a valid clock would.
        no_clock = bool(os.environ.get(NO_CLOCK_ENV))
        boot = next_boot(cfg.state_dir, 0.0 if no_clock else None)
        log = EventLog(cfg.node_id, cfg.log_format, min_level=cfg.log_level)
        if boot == 1:
            # No boot stored and no valid clock: ids of an earlier life may come back. Peers
            # take us after REPLAY_FORGET_MS; the gateway stores such readings apart.
            log.warning("boot_ids_may_repeat", boot=boot, state_dir=cfg.state_dir)
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
