"""MQTT ingest against a real Mosquitto: acks on P/<mesh>/batch-ack/<leader>."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.core import topics
from agent.core.messages import ACK_FENCED, ACK_OK
from testkit.broker import Mosquitto
from testkit.gateway import GatewayProcess, MqttBatchSender, make_batch
from testkit.tls import make_test_certificates
from tests.test_gateway_udp import stored

pytestmark = pytest.mark.broker
KEY = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")


def readings(node: str, seqs: range) -> list[list[Any]]:
    return [[node, 1, s, 1_700_000_000_000 + s, {"temp": 20_000 + s}] for s in seqs]


def start_gateway(db: Path, broker: Mosquitto, *extra: str) -> GatewayProcess:
    return GatewayProcess(
        str(db), "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), *extra
    ).start()


def test_mqtt_ingest_dedup_fencing_and_forgery(mosquitto: Mosquitto, tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    gw = start_gateway(db, mosquitto, "--mesh-key", "barn=" + KEY.hex())
    senders: list[MqttBatchSender] = []
    try:
        broker = (mosquitto.host, mosquitto.port)
        old = MqttBatchSender("barn", "pi-1", broker, key=KEY)
        new = MqttBatchSender("barn", "pi-2", broker, key=KEY)
        forger = MqttBatchSender("barn", "evil", broker, key=b"guessed")
        senders += [old, new, forger]
        batch = make_batch(1, "barn", "pi-1", readings("pi-1", range(10)))
        assert old.deliver(2, batch) == [1, ACK_OK, 2]
        assert old.deliver(2, batch) == [1, ACK_OK, 2]  # the same batch twice
        assert (
            new.deliver(3, make_batch(1, "barn", "pi-2", readings("pi-2", range(5))))[1] == ACK_OK
        )
        stale = old.deliver(2, make_batch(2, "barn", "pi-1", readings("pi-1", range(10, 15))))
        assert stale == [2, ACK_FENCED, 3]
        forger.send_frame(
            forger.frame(9, make_batch(1, "barn", "evil", readings("evil", range(5))))
        )
        assert forger.receive_ack(0.7) is None
        # A frame published on another mesh's topic is refused too.
        frame = new.frame(3, make_batch(2, "barn", "pi-2", readings("pi-2", range(5, 8))))
        new.send_frame(frame, topic=topics.topic(topics.DEFAULT_PREFIX, "other", topics.BATCH))
        assert new.receive_ack(0.5) is None
        assert stored(db) == (15, 15)
    finally:
        for sender in senders:
            sender.close()
        gw.stop()


def test_mqtt_gateway_restart_mid_stream(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The gateway crashes while QoS 1 batches flow; nothing is lost, nothing doubled."""
    db = tmp_path / "gw.db"
    gw = start_gateway(db, mosquitto)
    sender = MqttBatchSender("field", "pi-1", (mosquitto.host, mosquitto.port))
    batches = [
        make_batch(i, "field", "pi-1", readings("pi-1", range(10 * i, 10 * i + 10)))
        for i in range(20)
    ]
    try:
        for batch in batches[:8]:
            sender.deliver(1, batch)
        for batch in batches[8:11]:
            sender.send_frame(sender.frame(1, batch))  # in flight, unacknowledged
        gw.kill()
        for batch in batches[11:13]:
            sender.send_frame(sender.frame(1, batch))  # sent while the gateway is down
        gw = start_gateway(db, mosquitto)
        for batch in batches[8:]:
            assert sender.deliver(1, batch)[1] == ACK_OK
    finally:
        sender.close()
        gw.stop()
    assert stored(db) == (200, 200)


def test_mqtt_over_tls_with_user_and_custom_prefix(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    make_test_certificates(folder)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(folder / "passwd"), "gw", "gw-secret"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    config = "\n".join(
        [
            "cafile %s" % (folder / "ca.crt"),
            "certfile %s" % (folder / "server.crt"),
            "keyfile %s" % (folder / "server.key"),
            "password_file %s" % (folder / "passwd"),
            "allow_anonymous false",
        ]
    )
    subprocess.run(["mosquitto_passwd", "-b", str(folder / "passwd"), "leader", "l-secret"],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    with Mosquitto(config=config) as broker:
        common = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--mqtt-tls",
                  "--mqtt-ca", str(folder / "ca.crt"), "--mqtt-prefix", "site/north"]  # fmt: skip
        # A wrong password: the broker refuses, the gateway says so and exits non-zero.
        bad = GatewayProcess(str(tmp_path / "bad.db"), *common, "--mqtt-user", "gw",
                             "--mqtt-password", "nope")  # fmt: skip
        with pytest.raises(RuntimeError, match="refused the connection"):
            bad.start(timeout=15)
        gw = GatewayProcess(str(tmp_path / "gw.db"), *common, "--mqtt-user", "gw",
                            "--mqtt-password", "gw-secret", "--no-udp")  # fmt: skip
        gw.start()
        sender = None
        try:
            sender = MqttBatchSender(
                "orchard", "pi-1", (broker.host, broker.port), prefix="site/north",
                tls_ca=str(folder / "ca.crt"), user=("leader", "l-secret"),
            )  # fmt: skip
            batch = make_batch(1, "orchard", "pi-1", readings("pi-1", range(4)))
            assert sender.deliver(1, batch) == [1, ACK_OK, 1]
        finally:
            if sender is not None:
                sender.close()
            gw.stop()
    assert stored(tmp_path / "gw.db") == (4, 4)
