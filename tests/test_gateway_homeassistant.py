"""Home Assistant MQTT discovery, with a real Mosquitto, a real gateway and a real subscriber.

Every discovery config the gateway publishes is checked against Home Assistant's documented
schema (tests/hadiscovery.py); its value templates are rendered with Jinja2, Home Assistant's
template engine, against the state topics, and the values must be the stored readings in the
configs' units. Availability follows the gateway's last will and each node's silence, and Home
Assistant's birth message brings the configs back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.broker import Mosquitto
from testkit.gateway import GatewayProcess, MqttBatchSender, make_batch
from testkit.waiting import poll_until
from tests import hadiscovery

pytestmark = pytest.mark.broker

ODD = "esp 3/β"  # a node id that is no topic level as it is (a space, a slash, not ASCII)


class Subscriber:
    """A real MQTT client that keeps the last message (and its retain flag) of every topic."""

    def __init__(self, broker: Mosquitto, *topics: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        self.messages: dict[str, tuple[bytes, bool]] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        # Retain as published: the retain flag of live messages too, to check configs have it.
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        client.on_connect = lambda c, u, f, r, p: [c.subscribe(t, options=options) for t in topics]
        client.on_subscribe = lambda c, u, m, r, p: self.ready.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert self.ready.wait(10)
        self.client = client

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages[message.topic] = (bytes(message.payload), bool(message.retain))

    def get(self, topic: str) -> str | None:
        with self.lock:
            found = self.messages.get(topic)
        return found[0].decode() if found is not None else None

    def configs(self) -> dict[str, bytes]:
        with self.lock:
            return {t: p for t, (p, _) in self.messages.items() if t.endswith("/config") and p}

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto, "homeassistant/#", "meshelect/ha/#")
    yield sub
    sub.close()


def start_gateway(tmp_path: Path, broker: Mosquitto, *extra: str) -> GatewayProcess:
    return GatewayProcess(
        str(tmp_path / "gw.db"), "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), *extra
    ).start()


def send(
    sender: MqttBatchSender, batch_id: int, rows: list[list[Any]], members: list[list[Any]]
) -> None:
    batch = make_batch(batch_id, "greenhouse", "pi-1", rows, members=members,
                       elections=[[4, "pi-1", "start"]])  # fmt: skip
    assert sender.deliver(4, batch)[1] == 0


NOW_MS = int(time.time() * 1000)
ROWS = [
    ["pi-1", 1, 1, NOW_MS - 2000, {"temp_c": 20000, "humidity_pct": 50000, "load1": 900}],
    ["pi-1", 1, 2, NOW_MS - 1000, {"temp_c": 21500, "humidity_pct": 55500, "battery": 870, "load1": 1200}],
    ["pi-2", 1, 7, NOW_MS - 1500, {"temp_c": 19250, "soil moisture %": 432}],
    [ODD, 2, 1, NOW_MS - 1500, {"temperature": -2500}],
]  # fmt: skip
MEMBERS = [
    ["pi-1", 812, 870, 900, 1, 0],
    ["pi-2", 700, 655, 800, 0, 300],
    [ODD, 640, 420, 750, 0, 500],
]
# What Home Assistant must show: (device name, entity name) -> (value, unit, device class).
EXPECTED: dict[tuple[str, str], tuple[Any, str | None, str | None]] = {
    ("pi-1", "temp_c"): (21.5, "°C", "temperature"),  # the newest reading, not the first
    ("pi-1", "humidity_pct"): (55.5, "%", "humidity"),
    ("pi-1", "load1"): (1.2, None, None),
    ("pi-1", "Battery"): (87.0, "%", "battery"),  # its battery metric is this one entity
    ("pi-1", "Link quality"): (90.0, "%", None),
    ("pi-1", "Leader"): ("ON", None, None),
    ("pi-2", "temp_c"): (19.25, "°C", "temperature"),
    ("pi-2", "soil moisture %"): (0.432, None, None),
    ("pi-2", "Battery"): (65.5, "%", "battery"),
    ("pi-2", "Link quality"): (80.0, "%", None),
    ("pi-2", "Leader"): ("OFF", None, None),
    (ODD, "temperature"): (-2.5, "°C", "temperature"),
    (ODD, "Battery"): (42.0, "%", "battery"),
    (ODD, "Link quality"): (75.0, "%", None),
    (ODD, "Leader"): ("OFF", None, None),
    ("meshelect mesh greenhouse", "Leader"): ("pi-1", None, None),
    ("meshelect mesh greenhouse", "Term"): ("4", None, None),
    ("meshelect gateway gateway", "Status"): ("ON", None, "connectivity"),
}


def render(template: str, payload: str) -> str:
    """A value template as Home Assistant renders it: Jinja2, sandboxed, with ``value`` and
    ``value_json``."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    try:
        value_json = json.loads(payload)
    except ValueError:
        value_json = None
    return env.from_string(template).render(value=payload, value_json=value_json).strip()


def shown(config: dict[str, Any], sub: Subscriber) -> Any:
    """The state Home Assistant would show for this entity, from the retained state topic."""
    payload = sub.get(config["state_topic"])
    assert payload is not None, "nothing retained on %s" % config["state_topic"]
    text = render(config["value_template"], payload) if "value_template" in config else payload
    if "payload_on" in config:  # a binary sensor: on, off (or unknown)
        return {config["payload_on"]: "ON", config["payload_off"]: "OFF"}.get(text, text)
    try:
        return (
            float(text) if config.get("unit_of_measurement") or config.get("state_class") else text
        )
    except ValueError:
        return text


def test_discovery_configs_follow_home_assistants_schema(
    mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    start_gateway(tmp_path, mosquitto, "--silent-after", "60s")
    sender = MqttBatchSender("greenhouse", "pi-1", (mosquitto.host, mosquitto.port))
    send(sender, 1, ROWS, MEMBERS)
    assert poll_until(lambda: len(subscriber.configs()) >= len(EXPECTED), 10), sorted(
        subscriber.configs()
    )

    entities: dict[tuple[str, str], dict[str, Any]] = {}
    identifiers: set[str] = set()
    unique_ids: list[str] = []
    for topic, payload in sorted(subscriber.configs().items()):
        _component, config = hadiscovery.check(topic, payload)
        assert subscriber.messages[topic][1], "discovery configs are retained: %s" % topic
        object_id = hadiscovery.TOPIC.match(topic).group("object_id")  # type: ignore[union-attr]
        assert object_id == config["unique_id"], "best practice: object_id is the unique_id"
        unique_ids.append(config["unique_id"])
        device = config["device"]
        identifiers.update(device["identifiers"])
        entities[(device["name"], config["name"])] = config
    assert len(unique_ids) == len(set(unique_ids)), "unique ids are unique"
    assert set(entities) == set(EXPECTED)
    for config in entities.values():
        via = config["device"].get("via_device")
        assert via is None or via in identifiers, "via_device names a published device"

    def values_shown() -> bool:
        return all(shown(entities[key], subscriber) == EXPECTED[key][0] for key in EXPECTED)

    assert poll_until(values_shown, 10), {k: shown(c, subscriber) for k, c in entities.items()}
    for key, (_value, unit, device_class) in EXPECTED.items():
        config = entities[key]
        assert config.get("unit_of_measurement") == unit, key
        assert config.get("device_class") == device_class, key
        topics = [a["topic"] for a in config.get("availability", [])]
        topics += [config["availability_topic"]] if "availability_topic" in config else []
        if key[1] != "Status":
            assert "meshelect/ha/gateway/availability" in topics, key
        for topic in topics:
            assert subscriber.get(topic) == "online", (key, topic)
    # The odd id is made topic-safe, yet stays itself where people read it.
    odd = entities[(ODD, "temperature")]
    assert ODD not in odd["state_topic"] and " " not in odd["unique_id"]
    sender.close()


def test_availability_follows_the_last_will_and_each_nodes_silence(
    mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    gateway = start_gateway(tmp_path, mosquitto, "--silent-after", "3s", "--no-leader-after", "4s")
    sender = MqttBatchSender("greenhouse", "pi-1", (mosquitto.host, mosquitto.port))
    base = "meshelect/ha/gateway/greenhouse/"
    send(sender, 1, ROWS, MEMBERS)
    assert poll_until(lambda: subscriber.get(base + "pi-2/availability") == "online", 10)

    # pi-2 is no longer in the leader's view: silent after 3 s; pi-1 stays.
    batch_id = 2
    deadline = time.monotonic() + 20
    while subscriber.get(base + "pi-2/availability") != "offline" and time.monotonic() < deadline:
        send(sender, batch_id, [["pi-1", 1, 10 + batch_id, int(time.time() * 1000), {"temp_c": 21000}]],
             [MEMBERS[0]])  # fmt: skip
        batch_id += 1
        time.sleep(0.5)
    assert subscriber.get(base + "pi-2/availability") == "offline"
    assert subscriber.get(base + "pi-1/availability") == "online"

    # No batch at all for --no-leader-after: the mesh has no leader, and nobody is heard.
    assert poll_until(lambda: subscriber.get(base + "pi-1/availability") == "offline", 15)
    no_leader = {"leader": "none", "term": 4}
    assert poll_until(lambda: json.loads(subscriber.get(base + "state") or "{}") == no_leader, 15)

    # The gateway dies: its last will says so, retained, for every entity at once.
    assert subscriber.get("meshelect/ha/gateway/availability") == "online"
    gateway.kill()
    assert poll_until(lambda: subscriber.get("meshelect/ha/gateway/availability") == "offline", 10)
    gateway.start()
    assert poll_until(lambda: subscriber.get("meshelect/ha/gateway/availability") == "online", 10)
    # A clean stop says offline too (no last will is sent then).
    assert gateway.stop() == 0
    assert subscriber.get("meshelect/ha/gateway/availability") == "offline"
    sender.close()


def test_home_assistants_birth_brings_the_configs_back(
    mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    """Home Assistant restarted on a broker that lost the retained configs: its birth message
    (``online`` on homeassistant/status) makes the gateway send them again."""
    start_gateway(tmp_path, mosquitto)
    sender = MqttBatchSender("greenhouse", "pi-1", (mosquitto.host, mosquitto.port))
    send(sender, 1, ROWS, MEMBERS)
    assert poll_until(lambda: len(subscriber.configs()) >= len(EXPECTED), 10)
    gone = sorted(subscriber.configs())
    for topic in gone:
        subscriber.publish(topic, "", retain=True)  # an empty config deletes the entity
    assert poll_until(lambda: not subscriber.configs(), 10)
    subscriber.publish("homeassistant/status", "online")
    assert poll_until(lambda: sorted(subscriber.configs()) == gone, 10)
    sender.close()


def test_no_discovery_when_turned_off(
    mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    start_gateway(tmp_path, mosquitto, "--no-homeassistant")
    sender = MqttBatchSender("greenhouse", "pi-1", (mosquitto.host, mosquitto.port))
    send(sender, 1, ROWS, MEMBERS)  # acknowledged: the gateway took it in
    # What it would publish comes within milliseconds of the batch; give it ample time.
    time.sleep(1.5)
    assert [t for t in subscriber.messages if not t.startswith("homeassistant/status")] == []
    sender.close()


def test_a_flood_of_metric_names_is_bounded(
    mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    """A leader that reports ever new metric names gets 32 entities per node, not more: the
    rest is left out (and counted), and everything else goes on."""
    gateway = start_gateway(tmp_path, mosquitto)
    sender = MqttBatchSender("greenhouse", "pi-1", (mosquitto.host, mosquitto.port))
    rows = [  # at most 16 metrics in one reading (docs/wire.md)
        [
            "pi-1",
            1,
            k + 1,
            NOW_MS + k,
            {"m%02d" % i: i for i in range(16 * k, min(40, 16 * k + 16))},
        ]
        for k in range(3)
    ]
    send(sender, 1, rows, MEMBERS[:1])
    # Battery, link quality and leader come with the member; the metrics on top of them.
    assert poll_until(lambda: len(subscriber.configs()) >= 3 + 32 + 2 + 1, 10)
    send(sender, 2, [["pi-1", 1, 4, NOW_MS + 3, {"temp_c": 20000}]], MEMBERS[:1])
    configs = subscriber.configs()
    metrics = sorted(t for t in configs if "__m__" in t)
    assert len(metrics) == 32, metrics
    assert gateway.process is not None and gateway.process.poll() is None
    sender.close()


@pytest.mark.parametrize(
    ("topic", "payload", "problem"),
    [
        ("homeassistant/sensor/x y/config", "{}", "not a discovery topic"),
        ("homeassistant/sensor/x/config", "[]", "not a JSON object"),
        ("homeassistant/sensor/x/config", '{"name": "n"}', "required keys missing"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "state_topic": "a"}', "given twice"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "colour": "red"}', "does not take"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "dev": {"name": "d"}, "uniq_id": "u"}', "identifiers"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "dev": {"ids": ["d"]}}', "unique_id"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "dev_cla": "temperature", "unit_of_meas": "%"}', "no unit"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "avty_t": "b", "avty": [{"t": "c"}]}', "exclusive"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a/#"}', "wildcard"),
        ("homeassistant/binary_sensor/x/config", '{"stat_t": "a", "dev_cla": "warmth"}', "device_class"),
        ("homeassistant/sensor/x/config", '{"stat_t": "a", "o": {"sw": "1"}}', "origin"),
    ],
)  # fmt: skip
def test_the_schema_check_refuses_what_home_assistant_would(
    topic: str, payload: str, problem: str
) -> None:
    with pytest.raises(hadiscovery.SchemaError, match=problem):
        hadiscovery.check(topic, payload)
    # Abbreviations and the base topic are understood as Home Assistant reads them.
    _, config = hadiscovery.check(
        "homeassistant/sensor/node1/t/config",
        '{"~": "home/t", "stat_t": "~/state", "uniq_id": "t1", "dev": {"ids": "d1"}, "unit_of_meas": "°C", "dev_cla": "temperature"}',
    )
    assert config["state_topic"] == "home/t/state" and config["device"]["identifiers"] == ["d1"]
