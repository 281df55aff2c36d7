"""Agent configuration: a TOML file, validated, with a sane default for every setting.

A broken file or a value of the wrong type raises `ConfigError` naming the key
(`udp.port: expected an integer, got "x"`); the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import socket
import tomllib
from typing import Any

from agent.core import topics
from agent.core.datapath import MAX_MESH_BYTES
from agent.core.energy import Energy
from agent.core.node import MAX_NODE_ID_BYTES, make_config
from agent.core.sleepy import SleepCycle

TRANSPORTS = ("udp", "mqtt")
LOG_FORMATS = ("text", "json")
SENSOR_TYPES = ("cpu_temp", "load", "battery", "wireless", "simulated")
# A Pi hears bigger meshes than the core's default peer table is sized for (a board's).
PI_MAX_PEERS = 256


class ConfigError(Exception):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Table:
    """Reads typed values out of one TOML table and remembers which keys were used."""

    def __init__(self, data: Any, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(prefix.rstrip("."), f"expected a table, got {_describe(data)}")
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def string(self, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.prefix + key, f"expected a string, got {_describe(value)}")
        if choices and value not in choices:
            raise ConfigError(
                self.prefix + key, "expected one of {}, got {!r}".format(", ".join(choices), value)
            )
        return value

    def integer(
        self, key: str, default: int, low: int | None = None, high: int | None = None
    ) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.prefix + key, f"expected an integer, got {_describe(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(self.prefix + key, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.prefix + key, f"expected a number, got {_describe(value)}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.prefix + key, f"expected true or false, got {_describe(value)}")
        return value

    def table(self, key: str) -> _Table:
        value = self._get(key)
        return _Table({} if value is None else value, self.prefix + key + ".")

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.prefix + unknown[0], "unknown setting")


def parse_host_port(key: str, text: str, default_port: int) -> tuple[str, int] | None:
    """`host`, `host:port` or empty (-> None: discover it)."""
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(default_port)
    if not host:
        raise ConfigError(key, f"expected host or host:port, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(key, f"port is not a number in {text!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(key, f"port out of range in {text!r}")
    return host, port


class UdpConfig:
    def __init__(self, t: _Table) -> None:
        self.group = t.string("group", "239.255.77.77")
        try:
            first = int(self.group.split(".")[0])
            socket.inet_aton(self.group)
        except (ValueError, OSError):
            raise ConfigError("udp.group", f"not an IPv4 address: {self.group!r}") from None
        if not 224 <= first <= 239:
            raise ConfigError("udp.group", f"not a multicast address: {self.group!r}")
        self.port = t.integer("port", 47470, 1, 65535)
        # Unicast (readings, acks, batch acks) arrive here. 0 picks a free port: needed when
        # several agents share one host (the loopback demo); peers learn it from our frames.
        self.unicast_port = t.integer("unicast_port", 47470, 0, 65535)
        self.ttl = t.integer("ttl", 1, 1, 255)
        # An IPv4 address or an interface name; empty: the interface of the default route.
        self.interface = t.string("interface", "")
        # Our own multicast looped back to this host: needed only when other agents may share
        # it, i.e. when our unicast port is not the group port (with one agent per host, the
        # default, each own frame would only wake the loop to be dropped: at a 50 ms heartbeat
        # a fifth of the frames an agent of five receives, and a fifth of its idle CPU).
        self.loop = t.boolean("loop", self.unicast_port != self.port)
        t.check_unknown()


class MqttConfig:
    def __init__(self, t: _Table) -> None:
        self.broker = parse_host_port("mqtt.broker", t.string("broker", ""), 1883)
        self.prefix = t.string("prefix", topics.DEFAULT_PREFIX)
        if not self.prefix or any(ch in self.prefix for ch in "+#"):
            raise ConfigError("mqtt.prefix", "must be non-empty without + or #")
        self.username = t.string("username", "")
        self.password = t.string("password", "")
        self.tls = t.boolean("tls", False)
        self.ca_file = t.string("ca_file", "")
        self.cert_file = t.string("cert_file", "")
        self.key_file = t.string("key_file", "")
        self.keepalive_s = t.integer("keepalive_s", 5, 2, 3600)
        self.reconnect_min_ms = t.integer("reconnect_min_ms", 250, 50, 60000)
        self.reconnect_max_ms = t.integer("reconnect_max_ms", 4000, 50, 600000)
        t.check_unknown()


class SensorConfig:
    def __init__(self, t: _Table, index: int) -> None:
        key = f"sensors[{index}]"
        self.type = t.string("type", "", SENSOR_TYPES)
        if not self.type:
            raise ConfigError(key + ".type", "missing (one of {})".format(", ".join(SENSOR_TYPES)))
        self.path = t.string("path", "")
        self.name = t.string("name", "")
        # Simulated source settings.
        self.seed = t.integer("seed", 0)
        self.battery_start = t.integer("battery_start", 1000, 0, 1000)
        self.drain_per_min = t.integer("drain_per_min", 0, 0, 1000)
        self.leader_drain_per_min = t.integer("leader_drain_per_min", 0, 0, 1000)
        self.recharge_below = t.integer("recharge_below", 0, 0, 1000)
        self.mains = t.boolean("mains", False)
        # A file whose per-mille number, when it appears, sets the battery once (then the file
        # is deleted): how `meshelect demo` drains a battery on purpose. Empty: none.
        self.battery_set_file = t.string("battery_set_file", "")
        self.metrics: dict[str, tuple[int, int, int]] = {}
        curves = t.table("metrics")
        for metric in sorted(curves.data):
            curve = curves.table(metric)
            self.metrics[metric] = (
                curve.integer("base", 20000),
                curve.integer("amplitude", 0, 0),
                curve.integer("period_ms", 60000, 1),
            )
            curve.check_unknown()
        t.check_unknown()


class AgentConfig:
    """Every agent setting, validated. Build with `load_config(path)` or `from_dict`."""

    def __init__(self, data: dict[str, Any]) -> None:
        t = _Table(data, "")
        default_id = socket.gethostname().split(".")[0][:MAX_NODE_ID_BYTES] or "node"
        self.node_id = t.string("node_id", default_id)
        if not 1 <= len(self.node_id.encode()) <= MAX_NODE_ID_BYTES:
            raise ConfigError(
                "node_id", f"must be 1..{MAX_NODE_ID_BYTES} bytes of UTF-8, got {self.node_id!r}"
            )
        self.mesh = t.string("mesh", "default")
        if not 1 <= len(self.mesh.encode()) <= MAX_MESH_BYTES:
            raise ConfigError("mesh", f"must be 1..{MAX_MESH_BYTES} bytes of UTF-8")
        self.transport = t.string("transport", "udp", TRANSPORTS)
        # Hex, as the gateway takes it (`--mesh-key MESH=HEX`); empty: frames are not tagged.
        mesh_key_hex = t.string("mesh_key", "")
        try:
            self.mesh_key = bytes.fromhex(mesh_key_hex)
        except ValueError:
            raise ConfigError("mesh_key", "expected hex digits (e.g. 32 of them)") from None
        self.state_dir = t.string("state_dir", "/var/lib/meshelect")
        self.log_format = t.string("log_format", "text", LOG_FORMATS)
        self.log_level = t.string("log_level", "info", ("debug", "info", "warning", "error"))
        self.eligible = t.boolean("eligible", True)
        self.status_ms = t.integer("status_ms", 500, 50, 60000)
        self.seed = t.integer("seed", 0, 0, 2**31)

        # heartbeat_ms, [election] and [score]: the core's settings, with the core's defaults
        # and ranges (agent/core/node.py make_config; the firmware takes them from there too).
        election = dict(t.table("election").data)
        election.setdefault("max_peers", PI_MAX_PEERS)
        heartbeat = t._get("heartbeat_ms")
        given = {} if heartbeat is None else {"heartbeat_ms": heartbeat}
        try:
            core = make_config(election=election, score=t.table("score").data, **given)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise ConfigError(key, problem) from None
        self.heartbeat_ms = core.heartbeat_ms
        self.margin = core.margin
        self.quorum = core.quorum
        self.max_peers = core.max_peers
        self.suspect_intervals = core.suspect_intervals
        self.listen_intervals = core.listen_intervals
        self.probes = core.probes
        self.probe_ms = core.probe_ms
        self.weight_battery = core.weights.battery
        self.weight_link = core.weights.link
        self.low_battery = core.weights.low_battery

        # [energy] (agent/core/energy.py: currents, capacity, report interval) and [sleep]
        # (agent/core/sleepy.py: a sleepy member, never eligible), by the core's rules.
        self.energy = dict(t.table("energy").data)
        sleep = t._get("sleep")
        self.sleep: dict[str, Any] | None = None
        if sleep is not None:
            self.sleep = dict(t.table("sleep").data)
            self.eligible = False
        try:
            Energy(0, self.energy)
            if self.sleep is not None:
                SleepCycle(self.sleep)
        except ValueError as exc:
            key, _, problem = str(exc).partition(": ")
            raise ConfigError(key, problem) from None

        # Data path bounds: readings a member holds until confirmed; readings a leader holds.
        data_table = t.table("data")
        self.sample_ms = data_table.integer("sample_ms", 1000, 10, 3600000)
        self.buffer_capacity = data_table.integer("buffer_capacity", 1024, 1, 1000000)
        self.collector_capacity = data_table.integer("collector_capacity", 1024, 1, 1000000)
        data_table.check_unknown()

        gateway_table = t.table("gateway")
        self.gateway = parse_host_port(
            "gateway.address", gateway_table.string("address", ""), 47471
        )
        gateway_table.check_unknown()

        self.udp = UdpConfig(t.table("udp"))
        self.mqtt = MqttConfig(t.table("mqtt"))

        discovery = t.table("discovery")
        self.discovery = discovery.boolean("enabled", True)
        self.discovery_interface = discovery.string("interface", "")
        discovery.check_unknown()

        # Faults on purpose (agent/faults.py): a JSON file naming peers whose frames this agent
        # drops, as a partition would. Empty: none.
        faults = t.table("faults")
        self.faults_file = faults.string("file", "")
        faults.check_unknown()

        sensors = t._get("sensors")
        self.sensors: list[SensorConfig] = []
        if sensors is None:
            sensors = [{"type": t} for t in ("cpu_temp", "load", "battery", "wireless")]
        if not isinstance(sensors, list):
            raise ConfigError("sensors", "expected an array of tables ([[sensors]])")
        for index, entry in enumerate(sensors):
            self.sensors.append(SensorConfig(_Table(entry, f"sensors[{index}]."), index))
        t.check_unknown()


def from_dict(data: dict[str, Any]) -> AgentConfig:
    return AgentConfig(data)


def load_config(path: str | None) -> AgentConfig:
    """Read and validate a TOML file; no path gives the defaults."""
    if path is None:
        return AgentConfig({})
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config {path} is not valid TOML: {exc}") from None
    return AgentConfig(data)
