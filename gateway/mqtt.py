"""MQTT ingest: subscribe ``P/+/batch`` (QoS 1), answer on ``P/<mesh>/batch-ack/<leader>``
(the topics are ``agent/core/topics.py``'s).

paho-mqtt runs its network loop in its own thread and reconnects by itself; every message hops
onto the asyncio loop with ``call_soon_threadsafe`` (the gateway's frame path is loop-only).
With ``--mqtt-shared-group`` several gateways split the batches between them through an MQTT 5
shared subscription (``$share/<group>/P/+/batch``); fencing and dedup live in the database, so
that is safe.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.core import topics

if TYPE_CHECKING:
    from gateway.service import Gateway, GatewayConfig

log = logging.getLogger("meshelect.gateway.mqtt")

QOS = topics.qos(topics.BATCH)
KEEPALIVE_S = 10
# Session kept by the broker while the gateway restarts, so QoS 1 batches queue meanwhile.
SESSION_EXPIRY_S = 300
CONNECT_TIMEOUT_S = 10.0


def make_client(config: GatewayConfig, client_id: str) -> mqtt.Client:
    """A paho client (MQTT 5) with the gateway's broker settings: user, TLS, reconnect delays."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if config.mqtt_user:
        client.username_pw_set(config.mqtt_user, config.mqtt_password)
    if config.mqtt_tls:
        client.tls_set(
            ca_certs=config.mqtt_ca,
            certfile=config.mqtt_cert,
            keyfile=config.mqtt_key,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(1, 30)
    return client


class MqttIngest:
    def __init__(self, gateway: Gateway, config: GatewayConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.prefix = config.mqtt_prefix.rstrip("/")
        topic = topics.batch_filter(self.prefix)
        if config.mqtt_shared_group:
            topic = "$share/%s/%s" % (config.mqtt_shared_group, topic)
        self.topic = topic
        self.connected = False
        self._refused: str | None = None  # why the broker refused the first connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.config, "meshelect-gw-%s" % self.config.node_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        # connect() resolves and opens the socket: blocking, so off the loop.
        await self._loop.run_in_executor(
            None,
            lambda: self._client.connect(
                self.config.mqtt_host or "127.0.0.1",
                self.config.mqtt_port,
                KEEPALIVE_S,
                clean_start=False,
                properties=properties,
            ),
        )
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise TimeoutError(
                "MQTT broker %s:%d did not answer in %d s"
                % (self.config.mqtt_host, self.config.mqtt_port, CONNECT_TIMEOUT_S)
            ) from None
        if self._refused is not None:
            # A refusal at start is a configuration error (bad user, password, TLS...):
            # say so and stop, rather than retry forever in the background.
            await self.stop()
            raise ConnectionRefusedError(
                "MQTT broker %s:%d refused the connection: %s"
                % (self.config.mqtt_host, self.config.mqtt_port, self._refused)
            )

    async def stop(self) -> None:
        client = self._client
        assert self._loop is not None
        await self._loop.run_in_executor(None, client.disconnect)
        await self._loop.run_in_executor(None, client.loop_stop)

    # -- paho thread ---------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason)
            if self._ready is not None and not self._ready.is_set() and self._loop is not None:
                self._refused = str(reason)
                self._loop.call_soon_threadsafe(self._ready.set)
            return
        self.connected = True
        # Subscribe on every (re)connect: a broker that lost our session forgot it.
        client.subscribe(self.topic, qos=QOS)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any
    ) -> None:
        if self._loop is not None and self._ready is not None:
            self._loop.call_soon_threadsafe(self._ready.set)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Topic P/<mesh>/batch: the mesh named in the topic must be the frame's mesh.
        topic_mesh = topics.batch_mesh(self.prefix, message.topic)
        if topic_mesh is None:
            return
        payload = bytes(message.payload)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                self.gateway.on_frame, "mqtt", payload, self._reply, topic_mesh
            )

    # -- the ingest worker ---------------------------------------------------------------------

    def _reply(self, mesh: str, leader: str, ack: bytes) -> None:
        # From the worker thread, as soon as the batch is committed (paho's publish is
        # thread-safe).
        reply = topics.topic(self.prefix, mesh, topics.BATCH_ACK, leader)
        self._client.publish(reply, ack, qos=QOS)
