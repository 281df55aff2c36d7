"""Update notices on MQTT, for boards on the MQTT transport (``meshelect firmware ota push
--mqtt-host``).

A notice (``tools.ota.notice``: the signed datagram a board on UDP gets) is published, byte for
byte, on the board's topic ``P/<mesh>/update/<node>`` (``agent.core.topics``), QoS 1, where
the board's MQTT link hands it to the same check as the datagram (firmware/app/ota.py).

Not retained: push publishes it again every ``NOTICE_EVERY_S`` until the board reports, as it
sends the datagram, so a board that resets or reconnects meanwhile gets the next one, and
nothing is left on the broker once push is done. A retained notice (published by hand, say,
for boards that are off) would do no harm either: a board takes a serial once, and drops the
same serial again however often its reconnects bring it back.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt

from agent.core import topics

CONNECT_TIMEOUT_S = 10.0


class MqttNotices:
    """A connection to the boards' broker that publishes notices to one mesh's boards."""

    def __init__(
        self,
        host: str,
        port: int,
        mesh: str,
        prefix: str = topics.DEFAULT_PREFIX,
        user: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.mesh = mesh
        self._up = threading.Event()
        self._refusal = ""
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="meshelect-ota-%d" % os.getpid()
        )
        if user:
            client.username_pw_set(user, password)
        if tls:
            client.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        self.client = client
        try:
            client.connect(host, port)
        except (OSError, ValueError) as exc:
            raise ConnectionError("broker %s:%d: %s" % (host, port, exc)) from None
        client.loop_start()
        if not self._up.wait(CONNECT_TIMEOUT_S) or self._refusal:
            self.close()
            raise ConnectionError(
                "broker %s:%d: %s" % (host, port, self._refusal or "no answer to CONNECT")
            )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
        self._up.set()

    def send(self, node: str, data: bytes) -> None:
        """Publish ``data`` on ``node``'s update topic (queued by paho while reconnecting)."""
        name = topics.topic(self.prefix, self.mesh, topics.UPDATE, node)
        self.client.publish(name, data, qos=topics.qos(topics.UPDATE))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
