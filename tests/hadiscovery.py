"""Home Assistant's MQTT discovery schema, as documented, to check what the gateway publishes.

Written from Home Assistant's documentation and source (read, not imported: Home Assistant is
not a dependency of meshelect):

- https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery: the topic
  ``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`` (ids of ``[a-zA-Z0-9_-]``),
  a JSON object payload, abbreviated keys, the ``~`` base topic, an empty payload deletes
- homeassistant/components/mqtt/abbreviations.py: ``ABBREVIATIONS``, ``DEVICE_ABBREVIATIONS``,
  ``ORIGIN_ABBREVIATIONS`` (the part of them that sensors and binary sensors can use)
- homeassistant/components/mqtt/schemas.py: ``MQTT_ENTITY_COMMON_SCHEMA`` (availability,
  device, origin, entity category...), the device needing ``identifiers`` or ``connections``,
  the origin needing ``name``; ``availability`` and ``availability_topic`` are exclusive
- homeassistant/components/mqtt/config.py: ``MQTT_RO_SCHEMA`` (``state_topic`` required,
  ``value_template``, ``qos``, ``encoding``)
- homeassistant/components/mqtt/sensor.py and binary_sensor.py: each platform's own keys
- https://www.home-assistant.io/integrations/sensor/#device-class and
  https://www.home-assistant.io/integrations/binary_sensor/#device-class: device classes and
  the units each sensor class takes

Like Home Assistant, :func:`check` first expands abbreviations and the base topic; unlike it,
it refuses keys a platform does not know (Home Assistant ignores them, which would hide a
mistake here). It raises :class:`SchemaError` naming the problem.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOPIC = re.compile(
    r"^(?P<prefix>[^/#+]+)/(?P<component>[a-z_]+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
    r"(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)

ABBREVIATIONS = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "ops": "options",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mdl_id": "model_id",
    "mf": "manufacturer",
    "name": "name",
    "sa": "suggested_area",
    "sn": "serial_number",
    "sw": "sw_version",
}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}

# MQTT_ENTITY_COMMON_SCHEMA, MQTT_AVAILABILITY_SCHEMA and config.py's SCHEMA_BASE.
COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "payload_available", "payload_not_available", "device", "origin", "enabled_by_default",
    "entity_category", "entity_picture", "icon", "json_attributes_topic",
    "json_attributes_template", "object_id", "unique_id", "name", "qos", "encoding",
}  # fmt: skip
PLATFORM_KEYS = {
    "sensor": {
        "state_topic", "value_template", "device_class", "expire_after", "force_update",
        "last_reset_value_template", "options", "suggested_display_precision", "state_class",
        "unit_of_measurement",
    },
    "binary_sensor": {
        "state_topic", "value_template", "device_class", "expire_after", "force_update",
        "off_delay", "payload_on", "payload_off",
    },
}  # fmt: skip
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}
DEVICE_KEYS = {
    "connections", "identifiers", "manufacturer", "model", "model_id", "name", "hw_version",
    "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url",
}  # fmt: skip
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_ITEM_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
AVAILABILITY_MODES = {"all", "any", "latest"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}

# Sensor device classes and the units each takes (the ones a mesh may plausibly report; a
# class missing here is refused, so a new one gets its units written down first).
SENSOR_UNITS: dict[str, set[str]] = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "battery": {"%"},
    "moisture": {"%"},
    "pressure": {"mPa", "Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "current": {"A", "mA"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW"},
    "carbon_dioxide": {"ppm"},
    "illuminance": {"lx"},
    "signal_strength": {"dB", "dBm"},
}
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
    "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
    "tamper", "update", "vibration", "window",
}  # fmt: skip


class SchemaError(AssertionError):
    """A discovery message Home Assistant would refuse (or that hides a mistake)."""


def _expand(data: dict[str, Any], table: dict[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = table.get(key, key)
        if full in out:
            raise SchemaError("%s: %r given twice (abbreviated and in full)" % (where, full))
        out[full] = value
    return out


def _topic(value: Any, where: str) -> None:
    """A topic to subscribe to; wildcards would be legal there, but none of ours has one."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise SchemaError("%s: not a topic: %r" % (where, value))
    if len(value.encode()) > 65535:
        raise SchemaError("%s: topic too long" % where)
    if "+" in value or "#" in value:
        raise SchemaError("%s: a wildcard topic %r" % (where, value))


def check(topic: str, payload: bytes | str) -> tuple[str, dict[str, Any]]:
    """(component, config with every key in full) for one discovery message, or SchemaError."""
    match = TOPIC.match(topic)
    if not match:
        raise SchemaError("not a discovery topic: %r" % topic)
    component = match.group("component")
    if component not in PLATFORM_KEYS:
        raise SchemaError("%s: component %r is not checked here" % (topic, component))
    try:
        raw = json.loads(payload)
    except ValueError as exc:
        raise SchemaError("%s: payload is not JSON: %s" % (topic, exc)) from None
    if not isinstance(raw, dict):
        raise SchemaError("%s: payload is not a JSON object" % topic)
    config = _expand(raw, ABBREVIATIONS, topic)
    base = config.pop("~", None)
    if base is not None:
        for key, value in list(config.items()):
            if key.endswith("_topic") and isinstance(value, str):
                if value.startswith("~"):
                    config[key] = base + value[1:]
                elif value.endswith("~"):
                    config[key] = value[:-1] + base

    allowed = COMMON_KEYS | PLATFORM_KEYS[component]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise SchemaError("%s: keys a %s does not take: %s" % (topic, component, unknown))
    missing = sorted(REQUIRED[component] - set(config))
    if missing:
        raise SchemaError("%s: required keys missing: %s" % (topic, missing))

    for key in ("name", "unique_id", "value_template", "icon", "payload_on", "payload_off",
                "payload_available", "payload_not_available", "unit_of_measurement", "encoding"):  # fmt: skip
        if key in config and not isinstance(config[key], str):
            raise SchemaError("%s: %s must be a string" % (topic, key))
    for key in [k for k in config if k.endswith("_topic")]:
        _topic(config[key], "%s: %s" % (topic, key))
    if config.get("qos", 0) not in (0, 1, 2):
        raise SchemaError("%s: qos must be 0, 1 or 2" % topic)
    if "entity_category" in config and config["entity_category"] not in ENTITY_CATEGORIES:
        raise SchemaError("%s: entity_category %r" % (topic, config["entity_category"]))
    if "icon" in config and not re.match(r"^[a-z0-9-]+:[a-z0-9-]+$", config["icon"]):
        raise SchemaError("%s: icon %r is not prefix:name" % (topic, config["icon"]))

    _check_availability(topic, config)
    if "device" in config:
        if "unique_id" not in config:
            raise SchemaError("%s: a device needs the entity's unique_id" % topic)
        config["device"] = _check_device(topic, config["device"])
    if "origin" in config:
        config["origin"] = _check_origin(topic, config["origin"])
    if component == "sensor":
        _check_sensor(topic, config)
    else:
        _check_binary_sensor(topic, config)
    return component, config


def _check_availability(topic: str, config: dict[str, Any]) -> None:
    if "availability" in config and "availability_topic" in config:
        raise SchemaError("%s: availability and availability_topic are exclusive" % topic)
    if "availability_mode" in config and config["availability_mode"] not in AVAILABILITY_MODES:
        raise SchemaError("%s: availability_mode %r" % (topic, config["availability_mode"]))
    if "availability" not in config:
        return
    items = config["availability"]
    if not isinstance(items, list) or not items:
        raise SchemaError("%s: availability must be a non-empty list" % topic)
    expanded = []
    for item in items:
        if not isinstance(item, dict):
            raise SchemaError("%s: availability items are objects" % topic)
        item = _expand(item, ABBREVIATIONS, topic + " availability")
        unknown = sorted(set(item) - AVAILABILITY_ITEM_KEYS)
        if unknown or "topic" not in item:
            raise SchemaError("%s: availability item %r" % (topic, item))
        _topic(item["topic"], topic + ": availability topic")
        expanded.append(item)
    config["availability"] = expanded


def _check_device(topic: str, device: Any) -> dict[str, Any]:
    if not isinstance(device, dict):
        raise SchemaError("%s: device must be an object" % topic)
    device = _expand(device, DEVICE_ABBREVIATIONS, topic + " device")
    unknown = sorted(set(device) - DEVICE_KEYS)
    if unknown:
        raise SchemaError("%s: device keys unknown: %s" % (topic, unknown))
    identifiers = device.get("identifiers", [])
    if isinstance(identifiers, str):
        identifiers = [identifiers]
    connections = device.get("connections", [])
    if not identifiers and not connections:
        raise SchemaError("%s: a device needs identifiers or connections" % topic)
    if not all(isinstance(i, str) and i for i in identifiers):
        raise SchemaError("%s: device identifiers must be strings" % topic)
    if not all(isinstance(c, list) and len(c) == 2 for c in connections):
        raise SchemaError("%s: device connections are [type, id] pairs" % topic)
    for key in DEVICE_KEYS - {"identifiers", "connections"}:
        if key in device and not isinstance(device[key], str):
            raise SchemaError("%s: device %s must be a string" % (topic, key))
    device["identifiers"] = identifiers
    return device


def _check_origin(topic: str, origin: Any) -> dict[str, Any]:
    if not isinstance(origin, dict):
        raise SchemaError("%s: origin must be an object" % topic)
    origin = _expand(origin, ORIGIN_ABBREVIATIONS, topic + " origin")
    if set(origin) - ORIGIN_KEYS or not isinstance(origin.get("name"), str):
        raise SchemaError("%s: origin %r (name is required)" % (topic, origin))
    return origin


def _check_sensor(topic: str, config: dict[str, Any]) -> None:
    device_class = config.get("device_class")
    unit = config.get("unit_of_measurement")
    if device_class is not None:
        if device_class not in SENSOR_UNITS:
            raise SchemaError("%s: sensor device_class %r" % (topic, device_class))
        if unit not in SENSOR_UNITS[device_class]:
            raise SchemaError("%s: %r is no unit of %s" % (topic, unit, device_class))
    if "state_class" in config and config["state_class"] not in STATE_CLASSES:
        raise SchemaError("%s: state_class %r" % (topic, config["state_class"]))
    if "last_reset_value_template" in config and config.get("state_class") != "total":
        raise SchemaError("%s: last_reset_value_template needs state_class total" % topic)
    if "options" in config and device_class != "enum":
        raise SchemaError("%s: options only for enum sensors" % topic)
    for key in ("expire_after", "suggested_display_precision"):
        value = config.get(key, 0)
        if type(value) is not int or value < 0:
            raise SchemaError("%s: %s must be a positive integer" % (topic, key))


def _check_binary_sensor(topic: str, config: dict[str, Any]) -> None:
    device_class = config.get("device_class")
    if device_class is not None and device_class not in BINARY_SENSOR_CLASSES:
        raise SchemaError("%s: binary_sensor device_class %r" % (topic, device_class))
    for key in ("expire_after", "off_delay"):
        value = config.get(key, 0)
        if type(value) is not int or value < 0:
            raise SchemaError("%s: %s must be a positive integer" % (topic, key))
