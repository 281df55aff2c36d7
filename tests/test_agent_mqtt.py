"""MQTT specifics against a real Mosquitto on loopback: the topic layout, the retained leader
record a newcomer learns at once, and the last will when an agent dies."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from agent.core import topics
from agent.status import read_status
from testkit.broker import Mosquitto
from testkit.waiting import poll_until

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent
MESH = "t-mqtt-lo"
WAIT_S = 15.0


_wait = functools.partial(poll_until, timeout=WAIT_S)


def _agent(tmp_path: Path, node: str, battery: int, broker: Mosquitto) -> subprocess.Popen[bytes]:
    state = tmp_path / node
    state.mkdir()
    config = state / "agent.toml"
    config.write_text(
        'node_id = "%s"\nmesh = "%s"\ntransport = "mqtt"\nstate_dir = "%s"\nstatus_ms = 100\n'
        '[mqtt]\nbroker = "%s:%d"\nkeepalive_s = 2\n[discovery]\nenabled = false\n'
        '[[sensors]]\ntype = "simulated"\nbattery_start = %d\n'
        % (node, MESH, state, broker.host, broker.port, battery)
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agent.runtime", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(state / "agent.log", "wb"),
    )


class Watcher:
    """A plain MQTT client that records the last payload per topic under the mesh."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: dict[str, tuple[bytes, bool]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        every = topics.topic(topics.DEFAULT_PREFIX, MESH, "#")
        self.client.on_connect = lambda c, *_: c.subscribe(every, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages[message.topic] = (bytes(message.payload), bool(message.retain))

    def get(self, kind: str, node: str | None = None) -> tuple[bytes, bool] | None:
        with self.lock:
            return self.messages.get(topics.topic(topics.DEFAULT_PREFIX, MESH, kind, node))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_retained_leader_record_status_topics_and_last_will(tmp_path: Path) -> None:
    broker = Mosquitto()
    broker.start()
    procs = [_agent(tmp_path, "a1", 950, broker), _agent(tmp_path, "a2", 600, broker)]
    watchers: list[Watcher] = []
    try:
        a1_state = str(tmp_path / "a1")
        assert _wait(lambda: (read_status(a1_state) or {}).get("role") == "leader")
        # The topic layout: election frames flow, each node says it is online (retained).
        live = Watcher(broker)
        watchers.append(live)
        assert _wait(lambda: live.get(topics.ELECTION))
        assert _wait(lambda: live.get(topics.STATUS, "a2") == (topics.ONLINE, True))
        # A newcomer learns the leader at once from the retained record.
        late = Watcher(broker)
        watchers.append(late)
        record = _wait(lambda: late.get(topics.LEADER))
        assert record is not None and record[1]  # delivered as retained
        term, leader = cbor2.loads(record[0])
        assert leader == "a1"
        assert term == read_status(a1_state)["term"]  # type: ignore[index]
        # The follower heard the retained record too, before any heartbeat.
        assert read_status(str(tmp_path / "a2"))["broker_leader"] == [term, "a1"]  # type: ignore[index]
        # kill -9: the broker publishes the dead node's last will.
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(5)
        assert _wait(lambda: (live.get(topics.STATUS, "a2") or (b"",))[0] == topics.OFFLINE)
    finally:
        for watcher in watchers:
            watcher.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        broker.close()
