"""The running gateway: transports, the ingest worker, the HTTP server, timers.

Threads and loops: everything asyncio runs on one event loop. The database, the tracker and the
wire codecs belong to one worker thread (``Gateway.call`` / the frame path submit work to it),
so they never need locks and the event loop never blocks on SQLite. paho-mqtt runs its own
network thread and hands frames over with ``call_soon_threadsafe``. The frame path is
gateway/pipeline.py; with ``--decode-process`` frames are decoded in a child process beside the
worker (gateway/decoder.py), and the worker's codecs then only encode the acks.

On PostgreSQL the gateway also listens to the other replicas sharing the database
(gateway/pgnotify.py): their notes wait in a second inbox and go to the worker together, where
gateway/peers.py applies them to the live view.

The timer task (alerts, held changes, fence resets, retention, checkpoints) must never die: a
storage error is handled where it happens (gateway/ingest.py, gateway/upkeep.py), and anything
else a tick raises is logged and counted, and the next tick runs as usual.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import uvicorn

from agent.core import topics
from gateway import history, units
from gateway.app import create_app
from gateway.clock import CLOCK_FILE_ENV, OffsetWallClock, mono_ms, wall_clock
from gateway.events import EventHub
from gateway.frames import Decoded, FrameRouter
from gateway.health import Health
from gateway.ingest import Arrival, Ingest
from gateway.metrics import Counters, MetricsRenderer
from gateway.peers import SYNC, Peers
from gateway.pipeline import FramePipeline, Outcome, Reply
from gateway.retention import Retention
from gateway.storage import SqliteStorage, Storage, StorageError
from gateway.tracker import Tracker, TrackerConfig
from gateway.upkeep import Upkeep

log = logging.getLogger("meshelect.gateway")
T = TypeVar("T")

# Other replicas' notes are applied at most this often (the first after a quiet spell at once):
# well inside the live feed's 250 ms goal.
PEER_ROUND_MS = 100
# Retention runs this often (monotonic time); it deletes in the worker, between batches.
PURGE_EVERY_MS = 600_000


class _HttpServer(uvicorn.Server):
    """uvicorn without its signal handling: the CLI (or the test) owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatewayConfig:
    """Everything ``meshelect gateway`` can set. Port 0 means "any free port"."""

    def __init__(
        self,
        db_path: str = "meshelect-gateway.db",
        udp_host: str = "0.0.0.0",
        udp_port: int = 47471,
        udp: bool = True,
        http_host: str = "127.0.0.1",
        http_port: int = 8470,
        mdns: bool = True,
        mdns_interfaces: list[str] | None = None,
        mqtt_host: str | None = None,
        mqtt_port: int = 1883,
        mqtt_prefix: str = topics.DEFAULT_PREFIX,
        mqtt_tls: bool = False,
        mqtt_ca: str | None = None,
        mqtt_cert: str | None = None,
        mqtt_key: str | None = None,
        mqtt_user: str | None = None,
        mqtt_password: str | None = None,
        mqtt_shared_group: str | None = None,
        mesh_keys: dict[str, bytes] | None = None,
        open_meshes: bool = True,
        node_id: str = "gateway",
        api_token: str | None = None,
        raw_retention_ms: int = 7 * 86_400_000,
        aggregate_retention_ms: int = 365 * 86_400_000,
        synchronous: str = "FULL",
        tick_ms: int = 1000,
        purge_every_ms: int = PURGE_EVERY_MS,
        tracker: TrackerConfig | None = None,
        demo_control: str | None = None,
        homeassistant: bool = True,
        homeassistant_prefix: str = "homeassistant",
        decode_process: bool = False,
        ota_dir: str | None = None,
    ) -> None:
        self.db_path = db_path
        self.udp_host = udp_host
        self.udp_port = udp_port
        self.udp = udp
        self.http_host = http_host
        self.http_port = http_port
        self.mdns = mdns
        self.mdns_interfaces = mdns_interfaces
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.mqtt_prefix = mqtt_prefix
        self.mqtt_tls = mqtt_tls
        self.mqtt_ca = mqtt_ca
        self.mqtt_cert = mqtt_cert
        self.mqtt_key = mqtt_key
        self.mqtt_user = mqtt_user
        self.mqtt_password = mqtt_password
        self.mqtt_shared_group = mqtt_shared_group
        self.mesh_keys = dict(mesh_keys or {})
        self.open_meshes = open_meshes
        self.node_id = node_id
        self.api_token = api_token
        self.raw_retention_ms = raw_retention_ms
        self.aggregate_retention_ms = aggregate_retention_ms
        self.synchronous = synchronous
        self.tick_ms = tick_ms
        self.purge_every_ms = purge_every_ms
        self.tracker = tracker or TrackerConfig()
        self.demo_control = demo_control  # `meshelect demo`'s control socket: demo mode
        # Home Assistant MQTT discovery, when there is a broker (gateway/homeassistant.py).
        self.homeassistant = homeassistant
        self.homeassistant_prefix = homeassistant_prefix
        # Decode frames in a process of their own (gateway/decoder.py), beside the storage.
        # Off by default: on a shared 2-core machine with a few batches in flight, decoding in
        # the worker was as fast or faster, for less CPU (README, "Figures").
        self.decode_process = decode_process
        self.ota_dir = ota_dir  # bundles of over-the-air updates to serve (gateway/ota.py)


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        clock: Callable[[], int] | None = None,
        mono: Callable[[], int] = mono_ms,
    ) -> None:
        self.config = config
        self.clock = clock or wall_clock()  # wall ms: timestamps (a test hook may offset it)
        self.mono = mono  # monotonic ms: durations, retention
        self.token = config.api_token
        self.counters = Counters()
        self.health_state = Health(self.counters)
        self.hub = EventHub()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gw-ingest")
        self.pipeline: FramePipeline = None  # type: ignore[assignment]
        # Other replicas' notes waiting for the worker (PostgreSQL only); see _on_note.
        self._notes: list[dict[str, Any]] = []
        self._notes_busy = False
        self._listener: Any = None
        self.peers: Peers | None = None  # on PostgreSQL
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: Any = None
        self._mqtt: Any = None
        self._mdns: Any = None
        self.demo: Any = None  # gateway/democontrol.py, in demo mode only
        self._homeassistant: Any = None
        self._http: _HttpServer | None = None
        self.udp_address: tuple[str, int] | None = None
        self.http_address: tuple[str, int] | None = None
        self.started_ms = 0
        self._health_published = 0  # Health.version last published on the live feed
        # Built in the worker by start(): they belong to that thread.
        self.ingest: Ingest = None  # type: ignore[assignment]
        self.upkeep: Upkeep = None  # type: ignore[assignment]
        self.router: FrameRouter = None  # type: ignore[assignment]
        self.metrics: MetricsRenderer = None  # type: ignore[assignment]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.started_ms = self.clock()
        if isinstance(self.clock, OffsetWallClock):
            log.warning(
                "test clock hook on (%s=%s): the wall clock is offset by that file's ms",
                CLOCK_FILE_ENV,
                self.clock.path,
            )
        try:
            await self._start()
        except BaseException:
            await self.stop()  # release whatever did open (ports, threads, the database)
            raise

    async def _start(self) -> None:
        await self.call(self._open_storage)
        config = self.config
        assert self._loop is not None
        self.pipeline = FramePipeline(
            self._loop, self._worker, self._handle_frames, self.counters, self.hub, self.clock
        )
        if config.decode_process:
            router = self.router
            await self.pipeline.start_decoder(
                (config.mesh_keys, config.open_meshes, config.node_id, router.boot)
            )
        if self.peers is not None:
            from gateway.pgnotify import Listener

            storage = self.ingest.storage
            self._listener = Listener(
                config.db_path,
                lambda: storage.backend_pid,  # type: ignore[attr-defined]
                self._on_note,
                lambda: self._on_note(SYNC),
                self.counters,
            )
            self._tasks.append(asyncio.create_task(self._listener.run(), name="gateway-peers"))
        if config.udp:
            from gateway.udp import open_udp

            self._udp = await open_udp(self, config.udp_host, config.udp_port)
            self.udp_address = self._udp.address
        if config.mqtt_host:
            from gateway.mqtt import MqttIngest

            self._mqtt = MqttIngest(self, config)
            await self._mqtt.start()
            if config.homeassistant:
                from gateway.homeassistant import HomeAssistant

                self._homeassistant = HomeAssistant(self, config)
                await self._homeassistant.start()
        if config.demo_control:
            from gateway.democontrol import DemoControl

            self.demo = DemoControl(self, config.demo_control)
            await self.demo.start()
        await self._start_http()
        if config.mdns and self.udp_address is not None:
            from gateway.mdns import Advertiser

            self._mdns = Advertiser(config.node_id, self.udp_address[1], self.http_address)
            await self._mdns.start(config.mdns_interfaces, self.udp_address[0])
        self._tasks.append(asyncio.create_task(self._ticker(), name="gateway-ticker"))
        log.info(
            "gateway up: udp %s, http %s, db %s",
            self.udp_address,
            self.http_address,
            config.db_path,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug in a task must not turn a clean stop into a crash
                log.exception("task %s failed", task.get_name())
        self._tasks.clear()
        self._listener = None  # no more rounds of notes: the worker is about to go
        if self.demo is not None:
            await self.demo.stop()
        self.hub.close()
        if self._mdns is not None:
            await self._mdns.stop()
            self._mdns = None
        if self._http is not None:
            self._http.should_exit = True
            await self._http_task
            self._http = None
        if self._homeassistant is not None:
            await self._homeassistant.stop()
            self._homeassistant = None
        if self._mqtt is not None:
            await self._mqtt.stop()
            self._mqtt = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self.pipeline is not None:
            await self.pipeline.stop()
        if self.ingest is not None:
            try:
                await self.call(self.ingest.storage.close)
            except Exception as exc:  # e.g. the disk still refuses the final checkpoint
                log.warning("closing the database: %s", exc)
        self._worker.shutdown(wait=True)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _open_storage(self) -> None:
        config = self.config
        storage: Storage
        shared = config.db_path.startswith(("postgresql://", "postgres://"))
        if shared:
            from gateway.pgstorage import PostgresStorage

            storage = PostgresStorage(
                config.db_path,
                raw_retention_ms=config.raw_retention_ms,
                aggregate_retention_ms=config.aggregate_retention_ms,
            )
        else:
            storage = SqliteStorage(
                config.db_path,
                raw_retention_ms=config.raw_retention_ms,
                aggregate_retention_ms=config.aggregate_retention_ms,
                synchronous=config.synchronous,
            )
        boot = storage.next_boot()
        self.ingest = Ingest(storage, Tracker(config.tracker), self.counters, self.health_state)
        self.ingest.restore()
        if shared:
            self.peers = Peers(self.ingest)
        retention = Retention(
            config.raw_retention_ms, config.aggregate_retention_ms, config.purge_every_ms
        )
        self.upkeep = Upkeep(storage, retention, self.health_state, self.counters)
        self.upkeep.start(self.clock(), self.mono())
        self.router = FrameRouter(config.mesh_keys, config.open_meshes, config.node_id, boot)
        self.metrics = MetricsRenderer(
            self.counters, self.ingest.mesh_states, self.clock, self._gauges
        )

    async def _start_http(self) -> None:
        config = self.config
        sock = socket.socket(socket.AF_INET6 if ":" in config.http_host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.http_host, config.http_port))
        sock.listen(128)
        sock.setblocking(False)
        self.http_address = sock.getsockname()[:2]
        server_config = uvicorn.Config(
            create_app(self),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._http = _HttpServer(server_config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]), name="gateway-http")
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises the startup error
            await asyncio.sleep(0.01)

    # -- the worker ----------------------------------------------------------------------------

    def _now(self) -> int:
        """The wall clock as the worker reads it. A step is noticed here, before anything uses
        the stepped time: logged and counted, and the live view's time points move with it,
        so that a step is not taken for time passing (no false "silent" or "no leader")."""
        wall = self.clock()
        step = self.upkeep.observe(wall, self.mono())
        if step is not None:
            self.ingest.tracker.shift(step)
        return wall

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread that owns storage, tracker and codecs."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, fn, *args)

    def on_frame(
        self, transport: str, data: bytes, reply: Reply, topic_mesh: str | None = None
    ) -> None:
        """A frame arrived (loop thread): into the frame path (gateway/pipeline.py)."""
        self.pipeline.on_frame(transport, data, reply, topic_mesh)

    def _handle_frames(self, items: list[Any], decoded: bool) -> list[Outcome]:
        """Store a group of frames' batches in one transaction and make their acks (worker).

        ``items``: the decoder process's results (``decoded``), else frames decoded here.
        """
        now = self._now()
        results: list[Decoded] = items if decoded else self.router.decode_many(items, now)
        out: list[Outcome] = [None] * len(results)
        arrivals: list[Arrival] = []
        slots: list[int] = []
        for index, item in enumerate(results):
            if isinstance(item, Arrival):
                arrivals.append(item)
                slots.append(index)
            else:
                self.counters.count_drop(*item)
        stored = self.ingest.receive_many(arrivals, now)
        for index, arrival, result in zip(slots, arrivals, stored, strict=True):
            ack = self.router.encode_ack(
                arrival.mesh,
                arrival.sender,
                arrival.term,
                result.batch_id,
                result.status,
                result.highest_term,
            )
            out[index] = (arrival.mesh, arrival.sender, ack, result.events)
        return out

    def _on_note(self, note: dict[str, Any]) -> None:
        """Another replica's note (loop thread); applied on the worker, together with the
        notes that arrive meanwhile, as frames are (on_frame)."""
        self._notes.append(note)
        if not self._notes_busy:
            self._next_notes()

    def _next_notes(self) -> None:
        notes, self._notes = self._notes, []
        self._notes_busy = bool(notes) and self._listener is not None  # None: stopping
        if not self._notes_busy:
            return
        assert self._loop is not None
        future = self._loop.run_in_executor(self._worker, self._apply_notes, notes, len(self.hub))
        future.add_done_callback(self._notes_done)

    def _apply_notes(self, notes: list[dict[str, Any]], watchers: int) -> list[dict[str, Any]]:
        assert self.peers is not None
        return self.peers.apply(notes, self._now(), watchers > 0)

    def _notes_done(self, done: asyncio.Future[list[dict[str, Any]]]) -> None:
        try:
            self.hub.publish(done.result())
        except Exception:  # a bug: the next notes are applied as usual
            self.counters.task_errors += 1
            log.exception("applying other replicas' notes failed")
        # The next round after a pause: under load the notes of many batches share a round
        # (one read of a mesh's members for all of them), and the worker stores batches.
        assert self._loop is not None
        self._loop.call_later(PEER_ROUND_MS / 1000, self._next_notes)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_ms / 1000)
            try:
                events = await self.call(self._tick)
            except Exception:  # a bug, not a storage error (those are handled in the tick)
                self.counters.task_errors += 1
                log.exception("timer tick failed; the next one runs as usual")
                continue
            self.hub.publish(events)

    def _tick(self) -> list[dict[str, Any]]:
        """Time-driven alerts, held changes, fence resets, retention, checkpoints, health."""
        now = self._now()
        events = self.ingest.tick(now)
        events.extend(self.ingest.flush(now))
        events.extend(self.ingest.poll_fence_resets(now))
        if self.peers is not None:
            events.extend(self.peers.tick(now))
        self.upkeep.tick(self._now(), self.mono())
        self.health_state.tick(now)
        if self.health_state.version != self._health_published:
            self._health_published = self.health_state.version
            events.append({"type": "health", "health": self.health()})
        return events

    # -- worker-side helpers for the HTTP app --------------------------------------------------

    def has_mesh(self, mesh: str) -> bool:
        return self.ingest.has_mesh(mesh)

    def snapshot(self) -> dict[str, Any]:
        storage = self.ingest.storage
        alerts = storage.alerts(None, False, 100)
        # Alerts raised while the storage failed are not stored yet: the live view has them.
        stored = {(a["mesh"], a["kind"], a["node"], a["raised_ms"]) for a in alerts}
        for alert in self.ingest.tracker.active_alerts():
            key = (alert["mesh"], alert["kind"], alert["node"], alert["raised_ms"])
            if key not in stored:
                alerts.append(dict(alert, id=alert.get("id"), cleared_ms=None))
        now = self._now()
        meshes = self.ingest.mesh_states()
        return {
            "type": "snapshot",
            "now_ms": now,
            "meshes": meshes,
            "elections": storage.elections(None, 200),
            "alerts": alerts,
            "fence_resets": storage.fence_resets(None, 0, 1_000_000)[-200:],
            "health": self.health(),
            # When the page greys out a node: the same rule as the node_silent alert.
            "silent_ms": self.config.tracker.silent_ms,
            # The charts' recent past and how to show each metric: the page draws at once.
            "history": history.recent(storage, [m["name"] for m in meshes], now),
            "units": units.table(),
        }

    def reset_fence(self, mesh: str, term: int, source: str) -> dict[str, Any] | None:
        """An operator's fence reset (API); applied to the live view and published at once."""
        now = self._now()
        record = self.ingest.reset_fence(mesh, term, source, now)
        if record is not None:
            events = self.ingest.poll_fence_resets(now)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.hub.publish, events)
        return record

    def clear_alert_by_id(self, alert_id: int) -> bool:
        tracker = self.ingest.tracker
        for key, record in list(tracker.active.items()):
            if record.get("id") == alert_id:
                now = self._now()
                self.ingest.storage.clear_alert(alert_id, now)  # first: it may fail (503)
                del tracker.active[key]
                event = dict(record, type="alert_cleared", cleared_ms=now)
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.hub.publish, [event])
                return True
        return False

    def health(self) -> dict[str, Any]:
        """``/healthz``: status ``ok``, or ``degraded`` while the storage fails; ``problems``
        says what is wrong (storage, a wall-clock step holding retention back)."""
        now = self._now()
        health = self.health_state
        decoder = None if self.pipeline is None else self.pipeline.decoder
        try:
            schema = getattr(self.ingest.storage, "schema_version", None)
        except StorageError:
            schema = None
        return {
            "status": "degraded" if health.degraded else "ok",
            "problems": health.problems(),
            "uptime_ms": now - self.started_ms,
            "schema_version": schema,
            "meshes": len(self.ingest.tracker.meshes),
            "readings_stored": self.counters.readings_stored,
            "held_changes": len(self.ingest.held),
            "clock_steps": self.counters.clock_steps,
            "retention_held_back_ms": health.retention_held_back_ms,
            "udp": list(self.udp_address) if self.udp_address else None,
            "mqtt": self._mqtt.connected if self._mqtt is not None else None,
            # The frame decoder's process (None: frames are decoded in the worker thread).
            "decoder_pid": None if decoder is None else decoder.pid,
            "decoder_restarts": self.counters.decoder_restarts,
            # Listening to the other replicas sharing the database (PostgreSQL only).
            "replicas": self._listener.connected if self._listener is not None else None,
        }

    def _gauges(self) -> dict[str, Any]:
        return {
            "degraded": self.health_state.degraded,
            "held_changes": len(self.ingest.held),
            "wal_bytes": self.ingest.storage.wal_bytes(),
            "retention_held_back_ms": self.health_state.retention_held_back_ms,
        }
