"""Home Assistant MQTT discovery: the meshes appear in Home Assistant by themselves.

With ``--mqtt-host`` (and unless ``--no-homeassistant``) the gateway publishes, retained, one
discovery config per entity under ``<prefix>/<component>/<unique_id>/config`` (prefix
``homeassistant``, Home Assistant's default; see https://www.home-assistant.io/integrations/mqtt/
#mqtt-discovery), and the states and availabilities those configs point to:

| device | entity | state |
|---|---|---|
| a node | one sensor per metric it reports (device class and unit from gateway/units.py) | its newest stored reading |
| a node | Battery (%), Link quality (%, diagnostic), Leader (binary sensor) | the leader's latest view of it |
| a mesh | Leader (node id, or ``none``), Term | from the batches the gateway accepted |
| the gateway | Status (connectivity) | ``online``, or ``offline`` from its last will |

Topics (``P`` is ``--mqtt-prefix``, ``G`` the gateway's ``--node-id``, names made topic-safe by
:func:`slug`): ``P/ha/G/availability`` (retained ``online``; the MQTT last will, retained,
says ``offline`` when the gateway dies or loses the broker), ``P/ha/G/<mesh>/state``
(``{"leader", "term"}``), ``P/ha/G/<mesh>/<node>/state`` (``{"battery", "link", "score",
"leader", "readings": {metric: value}}``, values in the units of their configs) and
``P/ha/G/<mesh>/<node>/availability``. A node's entities are available while the gateway is
(``availability_mode: all``) and the node is heard: it went silent for ``--silent-after``, or
its mesh had no accepted batch for ``--no-leader-after``, and it is ``offline``.

A metric named ``battery`` is the same figure as the node's Battery entity and gets no second
one. Configs are sent again when Home Assistant comes online (its birth message on
``<prefix>/status``) and after every reconnect. Entities of nodes that are gone are left in
place (unavailable) rather than deleted. With several gateways on one broker
(``--mqtt-shared-group``), let only one of them publish discovery.

Everything but paho's own callbacks runs on the event loop; those hop over with
``call_soon_threadsafe``. The connection is the gateway's second one to the broker, apart from
ingest: its last will is the gateway's availability, and a broker that refuses
``homeassistant/#`` to this user never disturbs ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from gateway import history, units
from gateway.mqtt import KEEPALIVE_S, make_client

if TYPE_CHECKING:
    from gateway.service import Gateway, GatewayConfig

log = logging.getLogger("meshelect.gateway.homeassistant")

QOS = 1
ONLINE = "online"
OFFLINE = "offline"
CHECK_S = 1.0  # how often availability follows time (a node going silent)
# Bounds, so that a misbehaving leader cannot flood Home Assistant with entities: the tracker
# keeps as many members per mesh; a reading carries at most 32 metrics.
MAX_MESHES = 64
MAX_NODES_PER_MESH = 256
MAX_METRICS_PER_NODE = 32
try:
    VERSION = importlib.metadata.version("meshelect")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    VERSION = "unknown"
ORIGIN = {"name": "meshelect", "sw_version": VERSION}
_SAFE = re.compile(r"[^A-Za-z0-9-]+")


def slug(name: str) -> str:
    """``name`` as a topic level and id part: ``[A-Za-z0-9-]`` runs joined by single ``_``.
    A name that had to change gets a short hash of itself, so two names never meet."""
    safe = _SAFE.sub("_", name).strip("_")
    if safe == name:
        return name
    return "%s_%s" % (safe or "x", hashlib.sha256(name.encode()).hexdigest()[:8])


def value_in_unit(value: int, kind: units.Kind) -> float:
    return round(value * kind.scale, 3)


class _Node:
    __slots__ = ("available", "member", "mesh", "name", "readings", "state")

    def __init__(self, mesh: str, name: str) -> None:
        self.mesh = mesh
        self.name = name
        self.member: dict[str, Any] | None = None  # the leader's latest view (mesh event)
        self.readings: dict[str, tuple[int, int]] = {}  # metric -> (t_ms, value)
        self.state: str | None = None  # last published payloads, to skip repeats
        self.available: str | None = None


class _Mesh:
    __slots__ = ("last_batch_ms", "leader", "state", "term")

    def __init__(self) -> None:
        self.leader: str | None = None
        self.term = 0
        self.last_batch_ms = 0
        self.state: str | None = None


class HomeAssistant:
    """Publishes discovery configs, states and availabilities (loop thread)."""

    def __init__(self, gateway: Gateway, config: GatewayConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.discovery = config.homeassistant_prefix.rstrip("/")
        self.gw = slug(config.node_id)
        self.base = "%s/ha/%s" % (config.mqtt_prefix.rstrip("/"), self.gw)
        self.availability = self.base + "/availability"
        self.meshes: dict[str, _Mesh] = {}
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.configs: dict[str, str] = {}  # discovery topic -> payload, all sent so far
        self.connected = False
        self.dropped = 0  # meshes, nodes and metrics past the bounds: not announced
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client = make_client(config, "meshelect-gw-%s-ha" % config.node_id)
        self._client.will_set(self.availability, OFFLINE, qos=QOS, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        meshes, past = await self.gateway.call(self._stored)
        self.on_events([{"type": "mesh", "mesh": mesh} for mesh in meshes])
        for name, rows in sorted(past.items()):
            readings = [[n, boot, seq, t, metrics] for n, boot, seq, t, _, metrics in rows]
            self.on_events([{"type": "batch", "mesh": name, "readings": readings}])
        self.gateway.hub.listen(self.on_events)
        # connect_async: no blocking here, and paho keeps trying while the broker is away.
        self._client.connect_async(
            self.config.mqtt_host or "127.0.0.1", self.config.mqtt_port, KEEPALIVE_S
        )
        self._client.loop_start()
        self._task = asyncio.create_task(self._follow_time(), name="homeassistant")

    def _stored(self) -> tuple[list[dict[str, Any]], dict[str, list[list[Any]]]]:
        """Worker thread: the meshes and their newest stored readings, to start from."""
        meshes = self.gateway.ingest.mesh_states()
        names = [m["name"] for m in meshes]
        recent = history.recent(self.gateway.ingest.storage, names, self.gateway.clock())
        return meshes, {name: recent[name]["readings"] for name in names}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        client = self._client
        if self.connected:
            # A clean disconnect sends no last will: say it ourselves.
            info = client.publish(self.availability, OFFLINE, qos=QOS, retain=True)
            assert self._loop is not None
            await self._loop.run_in_executor(None, info.wait_for_publish, 2.0)
        client.disconnect()
        client.loop_stop()

    # -- what happens in the meshes (loop thread) -------------------------------------------

    def on_events(self, events: list[dict[str, Any]]) -> None:
        changed: set[tuple[str, str]] = set()
        for event in events:
            if event.get("remote"):
                continue  # another replica took it, and tells Home Assistant itself
            kind = event.get("type")
            if kind == "batch":
                changed |= self._take_batch(event)
            elif kind == "mesh":
                changed |= self._take_mesh(event["mesh"])
        for key in sorted(changed):
            self._publish_node(self.nodes[key])

    def _node(self, mesh: str, name: str) -> _Node | None:
        node = self.nodes.get((mesh, name))
        if node is None:
            if mesh not in self.meshes and len(self.meshes) >= MAX_MESHES:
                self._drop("mesh", mesh)
                return None
            if sum(1 for m, _ in self.nodes if m == mesh) >= MAX_NODES_PER_MESH:
                self._drop("node", name)
                return None
            node = self.nodes[(mesh, name)] = _Node(mesh, name)
            self._announce_node(node)
        return node

    def _drop(self, what: str, name: str) -> None:
        if not self.dropped:
            log.warning(
                "Home Assistant: too many entities; %s %r and later ones left out", what, name
            )
        self.dropped += 1

    def _take_batch(self, event: dict[str, Any]) -> set[tuple[str, str]]:
        mesh = event["mesh"]
        changed = set()
        for name, _boot, _seq, t_ms, metrics in event["readings"]:
            node = self._node(mesh, name)
            if node is None:
                continue
            for metric, value in sorted(metrics.items()):
                if metric == "battery":
                    continue  # the node's Battery entity shows it
                known = node.readings.get(metric)
                if known is None:
                    if len(node.readings) >= MAX_METRICS_PER_NODE:
                        self._drop("metric", metric)
                        continue
                    self._announce_metric(node, metric)
                if known is None or t_ms >= known[0]:
                    node.readings[metric] = (t_ms, value)
                    changed.add((mesh, name))
        return changed

    def _take_mesh(self, state: dict[str, Any]) -> set[tuple[str, str]]:
        name = state["name"]
        mesh = self.meshes.get(name)
        if mesh is None:
            if len(self.meshes) >= MAX_MESHES:
                self._drop("mesh", name)
                return set()
            mesh = self.meshes[name] = _Mesh()
            self._announce_mesh(name)
        mesh.leader = state.get("leader")
        mesh.term = state.get("term", 0)
        mesh.last_batch_ms = state.get("last_batch_ms", 0)
        self._publish_mesh(name, mesh)
        changed = set()
        for member in state.get("members", []):
            node = self._node(name, member["node"])
            if node is None:
                continue
            node.member = member
            changed.add((name, node.name))
        return changed

    async def _follow_time(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            for name in sorted(self.meshes):
                self._publish_mesh(name, self.meshes[name])
            for key in sorted(self.nodes):
                self._publish_availability(self.nodes[key])

    # -- states ------------------------------------------------------------------------------

    def _mesh_has_leader(self, mesh: _Mesh) -> bool:
        silence = self.gateway.clock() - mesh.last_batch_ms
        return mesh.leader is not None and silence <= self.config.tracker.no_leader_ms

    def _publish_mesh(self, name: str, mesh: _Mesh) -> None:
        leader = mesh.leader if self._mesh_has_leader(mesh) else None
        payload = json.dumps({"leader": leader or "none", "term": mesh.term}, sort_keys=True)
        if payload != mesh.state:
            mesh.state = payload
            self._publish(self._mesh_topic(name) + "/state", payload)

    def _publish_node(self, node: _Node) -> None:
        readings = {
            slug(metric): value_in_unit(value, units.kind_of(metric))
            for metric, (_t, value) in sorted(node.readings.items())
        }
        state: dict[str, Any] = {"readings": readings}
        member = node.member
        if member is not None:
            state["battery"] = value_in_unit(member["battery"], units.BATTERY)
            state["link"] = value_in_unit(member["link"], units.LINK)
            state["score"] = member["score"]
            state["leader"] = bool(member.get("leader"))
        payload = json.dumps(state, sort_keys=True)
        if payload != node.state:
            node.state = payload
            self._publish(self._node_topic(node) + "/state", payload)
        self._publish_availability(node)

    def _publish_availability(self, node: _Node) -> None:
        mesh = self.meshes.get(node.mesh)
        heard = node.member is not None and (
            self.gateway.clock() - node.member.get("last_seen_ms", 0)
            <= self.config.tracker.silent_ms
        )
        online = heard and mesh is not None and self._mesh_has_leader(mesh)
        payload = ONLINE if online else OFFLINE
        if payload != node.available:
            node.available = payload
            self._publish(self._node_topic(node) + "/availability", payload)

    # -- discovery configs -------------------------------------------------------------------

    def _mesh_topic(self, mesh: str) -> str:
        return "%s/%s" % (self.base, slug(mesh))

    def _node_topic(self, node: _Node) -> str:
        return "%s/%s/%s" % (self.base, slug(node.mesh), slug(node.name))

    def _gateway_device(self) -> dict[str, Any]:
        return {
            "identifiers": ["meshelect_gw__%s" % self.gw],
            "name": "meshelect gateway %s" % self.config.node_id,
            "manufacturer": "meshelect",
            "model": "gateway",
            "sw_version": VERSION,
        }

    def _mesh_device(self, mesh: str) -> dict[str, Any]:
        return {
            "identifiers": ["meshelect__%s" % slug(mesh)],
            "name": "meshelect mesh %s" % mesh,
            "manufacturer": "meshelect",
            "model": "mesh",
            "via_device": "meshelect_gw__%s" % self.gw,
        }

    def _node_device(self, node: _Node) -> dict[str, Any]:
        return {
            "identifiers": ["meshelect__%s__%s" % (slug(node.mesh), slug(node.name))],
            "name": node.name,
            "manufacturer": "meshelect",
            "model": "mesh node",
            "via_device": "meshelect__%s" % slug(node.mesh),
        }

    def _announce(self, component: str, unique_id: str, config: dict[str, Any]) -> None:
        config = dict(config, unique_id=unique_id, origin=ORIGIN, qos=QOS)
        topic = "%s/%s/%s/config" % (self.discovery, component, unique_id)
        payload = json.dumps(config, sort_keys=True, ensure_ascii=False)
        if self.configs.get(topic) != payload:
            self.configs[topic] = payload
            self._publish(topic, payload)

    def _announce_gateway(self) -> None:
        self._announce(
            "binary_sensor",
            "meshelect_gw__%s__status" % self.gw,
            {
                "name": "Status",
                "device_class": "connectivity",
                "state_topic": self.availability,
                "payload_on": ONLINE,
                "payload_off": OFFLINE,
                "device": self._gateway_device(),
            },
        )

    def _announce_mesh(self, mesh: str) -> None:
        topic = self._mesh_topic(mesh) + "/state"
        common = {
            "state_topic": topic,
            "availability_topic": self.availability,
            "device": self._mesh_device(mesh),
        }
        base = "meshelect__%s" % slug(mesh)
        self._announce(
            "sensor",
            base + "__leader",
            dict(common, name="Leader", value_template="{{ value_json.leader }}", icon="mdi:crown"),
        )
        self._announce(
            "sensor",
            base + "__term",
            dict(common, name="Term", value_template="{{ value_json.term }}", icon="mdi:counter"),
        )

    def _node_common(self, node: _Node) -> dict[str, Any]:
        return {
            "state_topic": self._node_topic(node) + "/state",
            "availability": [
                {"topic": self.availability},
                {"topic": self._node_topic(node) + "/availability"},
            ],
            "availability_mode": "all",
            "device": self._node_device(node),
        }

    def _announce_node(self, node: _Node) -> None:
        base = "meshelect__%s__%s" % (slug(node.mesh), slug(node.name))
        common = self._node_common(node)
        for key, kind, extra in (
            ("battery", units.BATTERY, {"name": "Battery"}),
            ("link", units.LINK, {"name": "Link quality", "entity_category": "diagnostic"}),
        ):
            config = dict(
                common,
                value_template="{{ value_json.%s }}" % key,
                unit_of_measurement=kind.unit,
                state_class="measurement",
                **extra,
            )
            if kind.device_class:
                config["device_class"] = kind.device_class
            self._announce("sensor", "%s__%s" % (base, key), config)
        self._announce(
            "binary_sensor",
            base + "__leader",
            dict(
                common,
                name="Leader",
                value_template="{{ 'ON' if value_json.leader else 'OFF' }}",
                payload_on="ON",
                payload_off="OFF",
                icon="mdi:crown",
            ),
        )

    def _announce_metric(self, node: _Node, metric: str) -> None:
        kind = units.kind_of(metric)
        key = slug(metric)
        config = dict(
            self._node_common(node),
            name=metric,
            value_template="{{ value_json.readings['%s'] }}" % key,
            state_class="measurement",
        )
        if kind.unit:
            config["unit_of_measurement"] = kind.unit
        if kind.device_class:
            config["device_class"] = kind.device_class
        unique_id = "meshelect__%s__%s__m__%s" % (slug(node.mesh), slug(node.name), key)
        self._announce("sensor", unique_id, config)

    # -- the broker --------------------------------------------------------------------------

    def _publish(self, topic: str, payload: str) -> None:
        """Retained, QoS 1; while the broker is away paho keeps them, and a reconnect resends
        everything anyway (``_republish``)."""
        self._client.publish(topic, payload, qos=QOS, retain=True)

    def _republish(self) -> None:
        """Loop thread: after a (re)connect or Home Assistant's birth, everything again."""
        self._publish(self.availability, ONLINE)
        self._announce_gateway()
        for topic, payload in sorted(self.configs.items()):
            self._publish(topic, payload)
        for mesh in self.meshes.values():
            mesh.state = None
        for node in self.nodes.values():
            node.state = node.available = None
        for name in sorted(self.meshes):
            self._publish_mesh(name, self.meshes[name])
        for key in sorted(self.nodes):
            self._publish_node(self.nodes[key])

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker refused the Home Assistant connection: %s", reason)
            return
        self.connected = True
        client.subscribe("%s/status" % self.discovery, qos=QOS)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._republish)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Home Assistant's birth message: it (re)started, maybe without the retained configs.
        if bytes(message.payload) == ONLINE.encode() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._republish)
