"""The MQTT transport: the same frames as UDP, on the Pi agent's topics (``agent.core.topics``).

Frames wait in a bounded queue and one sender task publishes them in order, so a slow
PUBACK never blocks the election loop. When full, the oldest frame goes (counted): the core
and the data path resend what matters.

``MqttRuntime`` is the runtime on this transport (``app.runtime.main`` loads this module only
when ``transport`` is ``mqtt``): frames go through the broker, mDNS also browses for one, the
elected leader is published, and the election clock pauses while the broker is unreachable.
"""

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio  # type: ignore[no-redef]

import cbor
import mqtt

from agent.core import topics
from agent.core.messages import READINGS_ACK
from agent.core.node import ROLE_LEADER
from app.config import host_port
from app.meshnode import DEST_GATEWAY, DEST_MESH, DEST_NODE
from app.runtime import Runtime, nonzero

_MAX_QUEUE = 32
# What a node receives: the mesh's election frames, and its own readings, acks and batch acks.
_INBOX = (topics.ELECTION, topics.READINGS, topics.ACKS, topics.BATCH_ACK)
_BROKER_TYPE = "_mqtt._tcp.local"


class MqttTransport:
    def __init__(self, cfg, on_frame, on_connection=None):
        m = cfg["mqtt"]
        self.node = cfg["node_id"]
        self.prefix = m.get("prefix", topics.DEFAULT_PREFIX)
        self.mesh = cfg["mesh"]
        self.on_frame = on_frame
        self.on_connection = on_connection
        self.broker = host_port(m.get("broker", ""), 1883)
        self.queue_dropped = 0
        self.sent = 0
        self._queue = []
        self._wake = asyncio.Event()
        status = self._topic(topics.STATUS, self.node)
        self._status_topic = status
        self._inbox = []  # the topics subscribed to, in _INBOX's order
        for kind in _INBOX:
            self._inbox.append(self._topic(kind, None if kind == topics.ELECTION else self.node))
        tls = None
        if m.get("tls") or m.get("ca_file"):
            tls = mqtt.tls_context(m.get("ca_file") or None)
        self.client = mqtt.MQTTClient(
            "meshelect-%s-%s" % (cfg["mesh"], self.node),
            "",
            keepalive=int(m.get("keepalive_s", 5)),
            will=(status, topics.OFFLINE, topics.qos(topics.STATUS), True),
            user=m.get("username") or None,
            password=m.get("password") or None,
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            reconnect_min_ms=int(m.get("reconnect_min_ms", 250)),
            reconnect_max_ms=int(m.get("reconnect_max_ms", 4000)),
            ssl=tls,
            server_hostname=m.get("server_name") or None,
        )

    def _topic(self, kind, node=None):
        return topics.topic(self.prefix, self.mesh, kind, node)

    def set_broker(self, host, port):
        self.broker = (host, port)

    def _on_message(self, topic, payload, retained):
        if topic in self._inbox and not retained:
            self.on_frame(payload)

    def _on_connect(self):
        self._queue.insert(0, (self._status_topic, topics.ONLINE, topics.qos(topics.STATUS), True))
        self._wake.set()
        if self.on_connection:
            self.on_connection(True)

    def _on_disconnect(self):
        if self.on_connection:
            self.on_connection(False)

    def queue(self, out):
        for dest, name, kind, frame in out:
            if dest == DEST_MESH:
                what = topics.ELECTION
                name = None
            elif dest == DEST_NODE:
                what = topics.ACKS if kind == READINGS_ACK else topics.READINGS
            elif dest == DEST_GATEWAY:
                what = topics.BATCH
                name = None
            else:
                continue
            self._push((self._topic(what, name), frame, topics.qos(what), False))

    def publish_leader(self, term, leader):
        leader_topic = self._topic(topics.LEADER)
        self._push((leader_topic, cbor.dumps([term, leader]), topics.qos(topics.LEADER), True))

    def _push(self, item):
        if len(self._queue) >= _MAX_QUEUE:
            self._queue.pop(0)
            self.queue_dropped += 1
        self._queue.append(item)
        self._wake.set()

    async def run(self):
        while self.broker is None:
            await asyncio.sleep(0.2)  # waiting for the config or mDNS
        self.client.host, self.client.port = self.broker
        for i, topic in enumerate(self._inbox):
            await self.client.subscribe(topic, topics.qos(_INBOX[i]))
        conn = asyncio.create_task(self.client.run())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and self.client.connected:
                    topic, payload, qos, retain = self._queue.pop(0)
                    if await self.client.publish(topic, payload, qos, retain):
                        self.sent += 1
        finally:
            conn.cancel()


class MqttRuntime(Runtime):
    """The runtime with every frame through the broker, and the Pi agent's broker pause
    (agent/runtime.py): while the broker is unreachable, silence says nothing about the peers,
    so the election clock (``now()``) stops: nobody is suspected and no election starts on
    either side. It resumes when the leader is heard again, at once if we lead or know no
    leader, and at the latest a grace period after the reconnection.
    """

    transport = "mqtt"
    browse = Runtime.browse + (_BROKER_TYPE,)

    def __init__(self, cfg, hw):
        Runtime.__init__(self, cfg, hw)
        self.mesh.needs_address = False  # readings go to a topic, not a learned address
        self.mesh.gateway_known = True  # the gateway subscribes to the batch topic
        self.mqtt = MqttTransport(cfg, self._on_frame, self._on_connection)
        self.clock_paused = False
        self._paused_total = 0  # ms spent paused, taken out of now()
        self._paused_at = 0  # now() while paused
        self._paused_real = 0  # real() when the pause began
        self._resume_at = None  # real() at which the grace after a reconnection ends
        self._published_term = None  # the term whose leader record we published
        self.pause()  # nothing can be heard before the first connection

    def now(self):
        real = self.real()
        if self._resume_at is not None and real >= self._resume_at:
            self.resume("grace over")
        return self._paused_at if self.clock_paused else real - self._paused_total

    def pause(self):
        if not self.clock_paused:
            real = self.real()
            self._paused_at = real - self._paused_total
            self._paused_real = real
            self.clock_paused = True

    def resume(self, why):
        if self.clock_paused:
            self._paused_total += self.real() - self._paused_real
            self.clock_paused = False
        self._resume_at = None
        print("clock resumed: %s" % why)

    def _on_frame(self, data):
        msg = self.mesh.frame(data, None, self.now())
        if msg is not None and self.clock_paused and msg.sender == self.mesh.node.leader:
            self.resume("leader heard")
        self.flush()

    def _on_connection(self, connected):
        if not connected:
            self.pause()
            print("clock paused: broker unreachable")
        elif self.clock_paused:
            node = self.mesh.node
            if node.role == ROLE_LEADER or node.leader is None:
                self.resume("reconnected")
            else:
                # Give the leader time to come back too before we may suspect it.
                m = self.cfg["mqtt"]
                grace = int(m.get("reconnect_max_ms", 4000)) + 2 * self.cfg["heartbeat_ms"]
                self._resume_at = self.real() + grace

    async def run(self, run_ms=0):
        client = asyncio.create_task(self.mqtt.run())
        try:
            await Runtime.run(self, run_ms)
        finally:
            client.cancel()

    def flush(self):
        out = self.mesh.out
        if out:
            self.mqtt.queue(out)
            del out[:]
        node = self.mesh.node
        if (
            node.role == ROLE_LEADER
            and node.leader == self.mesh.id
            and node.term != self._published_term
        ):
            # Newly leading: the retained leader record (once per term, as the Pi agent).
            self._published_term = node.term
            self.mqtt.publish_leader(node.term, node.leader)

    def discovery(self, now):
        Runtime.discovery(self, now)
        if self.mqtt.broker is None and self.mdns is not None:
            for svc in self.mdns.found(_BROKER_TYPE, now):
                if svc.addr is not None and svc.port:
                    self.mqtt.set_broker(svc.addr, svc.port)
                    break

    def _transport_status(self):
        client = self.mqtt.client
        return {
            "transport": "mqtt",
            "connected": client.connected,
            "connects": client.connects,
            "reconnects": client.reconnects,
            "sent": self.mqtt.sent,
            "queue_dropped": self.mqtt.queue_dropped,
            "drops": nonzero(client.drops),
        }
