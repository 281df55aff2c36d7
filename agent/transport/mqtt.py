"""MQTT transport (paho-mqtt 2.x, MQTT 5), bridged into asyncio.

The topics and their QoS are `agent/core/topics.py`'s (the firmware and the gateway use the
same module).

paho runs its network loop in its own thread; every callback hops into the asyncio loop with
`call_soon_threadsafe`, so the runtime never sees a second thread. paho reconnects on its own
with exponential backoff (`mqtt.reconnect_min_ms` .. `reconnect_max_ms`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from agent.core import topics
from agent.core.messages import READINGS_ACK
from agent.transport.base import FrameHandler, Transport, format_address

QOS_ELECTION = topics.qos(topics.ELECTION)
QOS_DATA = topics.qos(topics.READINGS)
MAX_QUEUED = 200  # bound on QoS 1 messages paho keeps while offline
OWN_FRAMES_REMEMBERED = 8


class MqttTransport(Transport):
    name = "mqtt"

    def __init__(self, cfg: Any, on_frame: FrameHandler, log: Any) -> None:
        super().__init__(on_frame)
        self.cfg = cfg.mqtt
        self.node = cfg.node_id
        self.log = log
        prefix, self.mesh = self.cfg.prefix, cfg.mesh
        self.t_election = topics.topic(prefix, cfg.mesh, topics.ELECTION)
        self.t_readings_in = topics.topic(prefix, cfg.mesh, topics.READINGS, self.node)
        self.t_acks_in = topics.topic(prefix, cfg.mesh, topics.ACKS, self.node)
        self.t_batch = topics.topic(prefix, cfg.mesh, topics.BATCH)
        self.t_batch_ack_in = topics.topic(prefix, cfg.mesh, topics.BATCH_ACK, self.node)
        self.t_leader = topics.topic(prefix, cfg.mesh, topics.LEADER)
        self.t_status = topics.topic(prefix, cfg.mesh, topics.STATUS, self.node)
        self.connected = False
        self.broker: tuple[str, int] | None = self.cfg.broker
        self.refusals = 0
        self.disconnects = 0
        self.received = 0
        self.leader_record: bytes | None = None
        self.on_connection: Callable[[bool], None] | None = None
        self.on_leader_record: Callable[[bytes], None] | None = None
        self.on_rtt: Callable[[int], None] | None = None
        self._own: list[tuple[bytes, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._make_client()
        self._started = False

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"meshelect-{self.mesh}-{self.node}",
            protocol=mqtt.MQTTv5,
        )
        client.will_set(self.t_status, topics.OFFLINE, qos=QOS_DATA, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password or None)
        if self.cfg.tls:
            client.tls_set(
                ca_certs=self.cfg.ca_file or None,
                certfile=self.cfg.cert_file or None,
                keyfile=self.cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        # paho only adds and doubles these, so sub-second floats work despite its int hint.
        client.reconnect_delay_set(
            self.cfg.reconnect_min_ms / 1000,
            self.cfg.reconnect_max_ms / 1000,
        )
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        return client

    # ---- paho thread -> asyncio loop -------------------------------------------------------

    def _hop(self, func: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(func, *args)

    def _paho_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._hop(self._refused, str(reason))
            return
        client.subscribe(
            [
                (self.t_election, QOS_ELECTION),
                (self.t_readings_in, QOS_DATA),
                (self.t_acks_in, QOS_DATA),
                (self.t_batch_ack_in, QOS_DATA),
                (self.t_leader, QOS_DATA),
            ]
        )
        client.publish(self.t_status, topics.ONLINE, qos=QOS_DATA, retain=True)
        self._hop(self._set_connected, True)

    def _paho_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._hop(self._set_connected, False, str(reason))

    def _paho_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._hop(self._deliver, message.topic, bytes(message.payload))

    # ---- in the asyncio loop ---------------------------------------------------------------

    def _refused(self, reason: str) -> None:
        self.refusals += 1
        self.log.error("broker_refused", reason=reason, count=self.refusals)

    def _set_connected(self, connected: bool, reason: str = "") -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            self.log.info(
                "broker_connected", broker=format_address(self.broker) if self.broker else ""
            )
        else:
            self.disconnects += 1
            self.log.warning("broker_lost", reason=reason)
        if self.on_connection is not None:
            self.on_connection(connected)

    def _deliver(self, topic: str, payload: bytes) -> None:
        self.received += 1
        if topic == self.t_leader:
            self.leader_record = payload
            if self.on_leader_record is not None and payload:
                self.on_leader_record(payload)
            return
        if topic == self.t_election:
            for index, (frame, sent_ms) in enumerate(self._own):
                if frame == payload:
                    # Our own frame, echoed by the broker: a real round trip, not a peer frame.
                    del self._own[index]
                    if self.on_rtt is not None:
                        self.on_rtt(int(time.monotonic() * 1000) - sent_ms)
                    return
        self.on_frame(payload, None)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.broker is not None:
            self._connect()

    def _connect(self) -> None:
        if self._started or self.broker is None:
            return
        self._started = True
        host, port = self.broker
        self.log.info("broker_connecting", broker=format_address((host, port)))
        self._client.connect_async(host, port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def set_broker(self, address: tuple[str, int]) -> None:
        """From mDNS when no broker was configured; the first one found is used."""
        if self.broker is None:
            self.broker = address
            self._connect()

    async def stop(self) -> None:
        if self._started:
            if self.connected:
                info = self._client.publish(
                    self.t_status, topics.OFFLINE, qos=QOS_DATA, retain=True
                )
                with contextlib.suppress(asyncio.TimeoutError, RuntimeError, ValueError):
                    await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 1.0), 1.5)
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)
        self._started = False
        self.connected = False

    def _publish(self, topic: str, frame: bytes, qos: int, retain: bool = False) -> bool:
        if not self.connected:
            return False
        info = self._client.publish(topic, frame, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.send_errors += 1
            return False
        self.sent += 1
        return True

    def send_election(self, frame: bytes) -> None:
        if self._publish(self.t_election, frame, QOS_ELECTION):
            self._own.append((frame, int(time.monotonic() * 1000)))
            if len(self._own) > OWN_FRAMES_REMEMBERED:
                del self._own[0]

    def send_to(self, node: str, kind: int, frame: bytes, address: Any) -> bool:
        what = topics.ACKS if kind == READINGS_ACK else topics.READINGS
        return self._publish(topics.topic(self.cfg.prefix, self.mesh, what, node), frame, QOS_DATA)

    def send_batch(self, frame: bytes) -> bool:
        return self._publish(self.t_batch, frame, QOS_DATA)

    def publish_leader(self, term: int, leader: str, record: bytes) -> None:
        self._publish(self.t_leader, record, QOS_DATA, retain=True)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["broker"] = format_address(self.broker) if self.broker else None
        info["refusals"] = self.refusals
        info["disconnects"] = self.disconnects
        info["received"] = self.received
        return info
