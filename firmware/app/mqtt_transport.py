"""The mesh through an MQTT broker: the same frames as UDP, on the Pi agent's topics
(``agent.core.topics``).

``MqttLink`` is the runtime's link on this transport (``app.runtime.main`` loads this module
only when ``transport`` is ``mqtt``): frames go through the broker, mDNS also browses for one,
the elected leader is published, and the app's election clock stops while the broker is
unreachable (``NodeApp.link_lost``: while nobody hears anybody, nobody is suspected).

Frames wait in a bounded queue and one sender task publishes them in order, so a slow
PUBACK never blocks the election loop. When full, the oldest frame goes (counted): the core
and the data path resend what matters.
"""

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio  # type: ignore[no-redef]

import cbor
import mqtt

from agent.core import topics
from agent.core.app import DEST_GATEWAY, DEST_MESH, DEST_NODE, nonzero
from agent.core.messages import READINGS_ACK
from app.config import host_port

_MAX_QUEUE = 32
# What a node receives: the mesh's election frames, and its own readings, acks and batch acks;
# last, its update notices (app/ota.py).
_INBOX = (topics.ELECTION, topics.READINGS, topics.ACKS, topics.BATCH_ACK, topics.UPDATE)
_BROKER_TYPE = "_mqtt._tcp.local"


def unverified_tls(m):
    """The refusal (a str) of TLS with no CA unless ``insecure = true``: the broker would not
    be authenticated and the MQTT password would go to anyone. Here, not in app.config: its
    names would cost every UDP node heap (firmware/README.md, "Memory"); the deploy tool
    applies it too."""
    if m.get("tls") and not m.get("ca_file") and m.get("insecure") is not True:
        return "mqtt: tls without ca_file checks no broker: give ca_file or insecure"
    return None


class MqttLink:
    """The runtime's link on MQTT (the interface of ``app.runtime.UdpLink``)."""

    clock_paused = True  # the app starts with its election clock stopped: no broker yet
    browse = (_BROKER_TYPE,)  # mDNS also looks for a broker

    def __init__(self, runtime):
        cfg = runtime.cfg
        m = cfg["mqtt"]
        self.runtime = runtime
        runtime.app.needs_address = False  # readings go to a topic, not a learned address
        runtime.app.gateway_known = True  # the gateway subscribes to the batch topic
        self.node = cfg["node_id"]
        self.prefix = m.get("prefix", topics.DEFAULT_PREFIX)
        self.mesh = cfg["mesh"]
        self.broker = host_port(m.get("broker", ""), 1883)
        # How long the leader's own reconnection may take: the app listens for it that long
        # (and two heartbeats) after ours, before it may suspect it.
        self.wait_ms = int(m.get("reconnect_max_ms", 4000))
        self.queue_dropped = 0
        self.sent = 0
        self.send_errors = 0  # (the queue counts what it drops)
        self._queue = []
        self._wake = asyncio.Event()
        status = self._topic(topics.STATUS, self.node)
        self._status_topic = status
        self._inbox = []  # the topics subscribed to, in _INBOX's order
        for kind in _INBOX:
            self._inbox.append(self._topic(kind, None if kind == topics.ELECTION else self.node))
        tls = None
        refused = unverified_tls(m)
        if refused:
            raise ValueError(refused)  # main() prints it as a config error and exits
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

    # ---- the runtime's link interface (see app.runtime.UdpLink) -------------------------

    def open(self, ip):
        return ()  # the client opens its own socket (run)

    def close(self):
        pass

    def offline(self):
        return False

    def leader(self, term):
        """We lead in ``term`` (once per term): the retained leader record, as the Pi agent."""
        self._push((self._topic(topics.LEADER), cbor.dumps([term, self.node]), 1, True))

    def found(self, m, now):
        if self.broker is None:
            for svc in m.found(_BROKER_TYPE, now):
                if svc.addr is not None and svc.port:
                    self.broker = (svc.addr, svc.port)
                    break

    def status(self):
        client = self.client
        return {
            "transport": "mqtt",
            "connected": client.connected,
            "connects": client.connects,
            "reconnects": client.reconnects,
            "sent": self.sent,
            "queue_dropped": self.queue_dropped,
            "drops": nonzero(client.drops),
        }

    # ---- the client's callbacks ----------------------------------------------------------

    def _on_message(self, topic, payload, retained):
        inbox = self._inbox
        runtime = self.runtime
        if topic == inbox[-1]:
            # An update notice, the UDP datagram's bytes: app/ota.py checks its tag and serial
            # as for UDP. A retained one too: its serial starts an update once, never again.
            from app import ota

            ota.frame(runtime, payload)
        elif topic in inbox and not retained:
            runtime.app.frame(payload, None, runtime.now())
            runtime.flush()

    def _on_connect(self):
        self._queue.insert(0, (self._status_topic, topics.ONLINE, 1, True))
        self._wake.set()
        runtime = self.runtime
        runtime.app.connected(runtime.now(), True, self.wait_ms)
        runtime.flush()

    def _on_disconnect(self):
        runtime = self.runtime
        runtime.app.connected(runtime.now(), False)
        runtime.flush()

    # ---- sending ---------------------------------------------------------------------------

    def send(self, out):
        for dest, name, kind, frame in out:
            if dest == DEST_MESH:
                item = (self._topic(topics.ELECTION), frame, 0, False)
            elif dest == DEST_NODE:
                what = topics.ACKS if kind == READINGS_ACK else topics.READINGS
                item = (self._topic(what, name), frame, 1, False)
            elif dest == DEST_GATEWAY:
                item = (self._topic(topics.BATCH), frame, 1, False)
            else:
                continue
            self._push(item)

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
        for i in range(len(_INBOX)):
            await self.client.subscribe(self._inbox[i], topics.qos(_INBOX[i]))
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
