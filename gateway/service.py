"""The running gateway: transports, the ingest worker, the HTTP server, timers.

Threads and loops: everything asyncio runs on one event loop. The database, the tracker and the
wire codecs belong to one worker thread (``Gateway.call`` / the frame path submit work to it),
so they never need locks and the event loop never blocks on SQLite. paho-mqtt runs its own
network thread and hands frames over with ``call_soon_threadsafe``.

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
from gateway.frames import FrameDrop, FrameRouter
from gateway.health import Health
from gateway.ingest import Arrival, Ingest
from gateway.metrics import Counters, MetricsRenderer
from gateway.retention import Retention
from gateway.storage import SqliteStorage, Storage, StorageError
from gateway.tracker import Tracker, TrackerConfig
from gateway.upkeep import Upkeep

log = logging.getLogger("meshelect.gateway")
T = TypeVar("T")

# Frames waiting for the worker before new ones are dropped (counted "overload"): the leaders
# resend what is not acknowledged, so shedding load loses nothing.
MAX_PENDING_FRAMES = 2000
# At most this many frames go to the worker as one group (one transaction): 64 full batches
# are 4096 readings, a commit of a few ms that holds no ack back for long.
MAX_GROUP = 64
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
        self.ota_dir = ota_dir  # bundles of over-the-air updates to serve (gateway/ota.py)


Reply = Callable[[str, str, bytes], None]  # (mesh, leader, ack frame)


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
        self._pending = 0
        # Frames waiting for the worker: (transport, data, topic mesh, reply); see on_frame.
        self._inbox: list[tuple[str, bytes, str | None, Reply]] = []
        self._group_busy = False
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
        if config.db_path.startswith(("postgresql://", "postgres://")):
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
        """A frame arrived (loop thread). Decoding and storing happen on the worker.

        Frames that arrive while the worker stores a group wait in the inbox and go to the
        worker together as the next group: one transaction, one commit for them all (group
        commit), and each frame's ack is sent once that commit is done.
        """
        if self._pending >= MAX_PENDING_FRAMES:
            self.counters.count_drop(transport, "overload")
            return
        self._pending += 1
        self._inbox.append((transport, bytes(data), topic_mesh, reply))
        if not self._group_busy:
            self._next_group()

    def _next_group(self) -> None:
        group = self._inbox[:MAX_GROUP]
        del self._inbox[:MAX_GROUP]
        if not group:
            self._group_busy = False
            return
        self._group_busy = True
        assert self._loop is not None
        future = self._loop.run_in_executor(
            self._worker, self._handle_frames, [frame[:3] for frame in group]
        )
        future.add_done_callback(lambda done: self._group_done(done, [f[3] for f in group]))

    def _handle_frames(
        self, frames: list[tuple[str, bytes, str | None]]
    ) -> list[tuple[str, str, bytes, list[dict[str, Any]]] | None]:
        """Decode a group of frames and store their batches in one transaction (worker)."""
        now = self._now()
        out: list[tuple[str, str, bytes, list[dict[str, Any]]] | None] = [None] * len(frames)
        arrivals: list[Arrival] = []
        slots: list[int] = []
        for index, (transport, data, topic_mesh) in enumerate(frames):
            try:
                mesh, msg = self.router.decode(data, now)
            except FrameDrop as drop:
                self.counters.count_drop(transport, drop.reason)
                continue
            if topic_mesh is not None and topic_mesh != mesh:
                self.counters.count_drop(transport, "topic_mismatch")
                continue
            arrivals.append(Arrival(transport, mesh, msg.sender, msg.term, msg.body, True))
            slots.append(index)
        results = self.ingest.receive_many(arrivals, now)
        for index, arrival, result in zip(slots, arrivals, results, strict=True):
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

    def _group_done(self, done: asyncio.Future[Any], replies: list[Reply]) -> None:
        self._pending -= len(replies)
        try:
            outcomes = done.result()
        except Exception:  # a bug, not bad input: keep serving, but say so
            log.exception("frame handling failed")
            for _ in replies:
                self.counters.count_drop("any", "internal_error")
            outcomes = []
        for reply, outcome in zip(replies, outcomes, strict=False):
            if outcome is None:
                continue
            mesh, leader, ack, events = outcome
            try:
                reply(mesh, leader, ack)
            except OSError as exc:
                log.warning("could not send BATCH_ACK to %s/%s: %s", mesh, leader, exc)
            self.hub.publish(events)
        self._next_group()

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
        }

    def _gauges(self) -> dict[str, Any]:
        return {
            "degraded": self.health_state.degraded,
            "held_changes": len(self.ingest.held),
            "wal_bytes": self.ingest.storage.wal_bytes(),
            "retention_held_back_ms": self.health_state.retention_held_back_ms,
        }
