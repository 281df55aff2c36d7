"""The per-device config (``config.json``, written by ``meshelect firmware deploy``) and the
persisted boot counter.

JSON because MicroPython reads it with no extra library. Keys are the Pi agent's TOML keys
(``node_id``, ``mesh``, ``mesh_key`` in hex, ``heartbeat_ms``, ``eligible``, ``transport``,
``udp``, ``mqtt``, ``gateway``, ``discovery``, ``election``, ``score``, ``data``) plus ``wifi``
and ``hw`` (the board) and a few runtime settings (``status_ms``, ``status_file``,
``boot_file``, ``run_ms``). A problem raises ``ConfigError`` naming the key.
"""

import json

MAX_NODE_ID_BYTES = 16

DEFAULTS = {
    "mesh": "default",
    "mesh_key": "",
    "heartbeat_ms": 250,
    "eligible": True,
    "transport": "udp",
    "boot_file": "boot_count",
    "udp": {},
    "mqtt": {},
    "gateway": {},
    "discovery": {},
    "election": {},
    "score": {},
    "data": {},
    "wifi": {},
    "hw": {},
}
# [data] defaults: smaller than the Pi agent's 1024/1024, sized for an ESP32 without PSRAM.
DATA_DEFAULTS = {"sample_ms": 1000, "buffer_capacity": 64, "collector_capacity": 128}
# [election] keys the core's Config takes; [score] keys of its Weights.
ELECTION_KEYS = ("margin", "quorum", "max_peers", "suspect_intervals", "listen_intervals")
SCORE_KEYS = ("battery", "link", "low_battery")


class ConfigError(ValueError):
    pass


def load(path="config.json"):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError:
        raise ConfigError("%s: cannot read" % path)
    except ValueError:
        raise ConfigError("%s: not valid JSON" % path)
    return check(data)


def check(data):
    """Fill defaults and check types; returns a new dict."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected an object")
    cfg = {}
    for key in DEFAULTS:
        default = DEFAULTS[key]
        cfg[key] = dict(default) if isinstance(default, dict) else default
    for key in data:
        cfg[key] = data[key]
    node = cfg.get("node_id")
    if not isinstance(node, str) or not 1 <= len(node.encode()) <= MAX_NODE_ID_BYTES:
        raise ConfigError("node_id: must be 1..16 bytes of UTF-8, got %r" % (node,))
    if not isinstance(cfg["mesh"], str) or not cfg["mesh"]:
        raise ConfigError("mesh: must be a non-empty string")
    _positive(cfg["heartbeat_ms"], "heartbeat_ms")
    if cfg["transport"] not in ("udp", "mqtt"):
        raise ConfigError("transport: expected udp or mqtt")
    for key in ("udp", "mqtt", "gateway", "discovery", "election", "score", "data", "wifi", "hw"):
        if not isinstance(cfg[key], dict):
            raise ConfigError("%s: expected an object" % key)
    data = dict(DATA_DEFAULTS)
    for key in cfg["data"]:
        if key not in DATA_DEFAULTS:
            raise ConfigError("data.%s: unknown key" % key)
        data[key] = _positive(cfg["data"][key], "data." + key)
    cfg["data"] = data
    for table, known in (("election", ELECTION_KEYS), ("score", SCORE_KEYS)):
        for key in cfg[table]:
            if key not in known:
                raise ConfigError("%s.%s: unknown key" % (table, key))
            value = cfg[table][key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError("%s.%s: expected an integer >= 0" % (table, key))
    try:
        cfg["key_bytes"] = bytes.fromhex(cfg["mesh_key"]) if cfg["mesh_key"] else b""
    except (ValueError, TypeError):
        raise ConfigError("mesh_key: expected hex")
    return cfg


def _positive(value, key):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError("%s: expected a positive integer" % key)
    return value


def next_boot(path):
    """Read, increment and persist the boot counter (replay protection needs it to grow)."""
    boot = 0
    try:
        with open(path) as f:
            boot = int(f.read().strip() or "0")
    except (OSError, ValueError):
        pass
    boot += 1
    try:
        with open(path, "w") as f:
            f.write("%d\n" % boot)
    except OSError:
        pass  # read-only filesystem: peers forget us after REPLAY_FORGET_MS anyway
    return boot


def host_port(text, default_port):
    """``"host:port"`` or ``"host"`` -> (host, port); empty -> None."""
    if not text:
        return None
    if ":" in text:
        host, port = text.rsplit(":", 1)
        try:
            return host, int(port)
        except ValueError:
            raise ConfigError("address %r: bad port" % text)
    return text, default_port
