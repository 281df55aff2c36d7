"""Lab files: a TOML description of a lab -> ``LabSpec`` (resources only, nothing started).

The board part is the firmware inventory's format (``meshelect firmware provision``):
``[defaults]`` is merged into every ``[[board]]``, ``[flash]`` gives ``chip``/``image``. The
lab adds ``[lab]`` (name, type, features, timeouts), ``[gateway]`` and, for virtual labs,
``[virtual]``. Keys a board table may hold besides its node config:
``port``, ``baud`` (serial), ``power_on``, ``power_off``, ``power_off_s`` (power port),
``chip``, ``image`` (flashing), ``heapsize`` (virtual), ``features``.

Every problem is a ``LabFileError`` naming the file and the key.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

from hil.resources import (
    LAB_TYPES,
    BoardSpec,
    Gateway,
    LabSpec,
    PowerPort,
    SerialPort,
    VirtualBoard,
)
from tools.firmware import merge

# Board keys that describe resources, not the node: kept out of the device's config.json.
RESOURCE_KEYS = (
    "port",
    "baud",
    "power_on",
    "power_off",
    "power_off_s",
    "chip",
    "image",
    "heapsize",
    "features",
)
DEFAULT_BAUD = 115200


class LabFileError(ValueError):
    """The lab file is missing, not TOML, or describes an impossible lab."""


def load_lab(path: str | Path) -> LabSpec:
    """Read and check a lab file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise LabFileError("lab file %s: %s" % (path, exc.strerror or exc)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LabFileError("lab file %s is not valid TOML: %s" % (path, exc)) from None
    try:
        return parse_lab(data, path)
    except LabFileError as exc:
        raise LabFileError("lab file %s: %s" % (path, exc)) from None


def parse_lab(data: dict[str, Any], path: Path) -> LabSpec:
    lab = _table(data, "lab")
    kind = lab.get("type", "real")
    if kind not in LAB_TYPES:
        raise LabFileError("lab.type: expected one of %s, got %r" % (", ".join(LAB_TYPES), kind))
    defaults = _table(data, "defaults")
    flash = _table(data, "flash")
    raw_boards = data.get("board")
    if not isinstance(raw_boards, list) or not raw_boards:
        raise LabFileError("no [[board]] tables")
    boards = []
    for index, raw in enumerate(raw_boards):
        if not isinstance(raw, dict):
            raise LabFileError("board %d: expected a table" % (index + 1))
        boards.append(_board(raw, index, kind, defaults, flash))
    names = [b.name for b in boards]
    if len(set(names)) != len(names):
        raise LabFileError("two boards share a node_id: %s" % sorted(names))
    meshes = {str(b.config.get("mesh", "default")) for b in boards}
    if len(meshes) != 1:
        raise LabFileError("boards are in different meshes: %s" % sorted(meshes))
    if kind == "real":
        ports = [b.serial.path for b in boards if b.serial is not None]
        if len(set(ports)) != len(ports):
            raise LabFileError("two boards share a serial port")
    virtual = _table(data, "virtual")
    gateway_table = _table(data, "gateway")
    url = gateway_table.get("url")
    gateway = None
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise LabFileError("gateway.url: expected an http(s):// URL, got %r" % (url,))
        gateway = Gateway(url=url.rstrip("/"))
    return LabSpec(
        path=path,
        name=_string(lab.get("name", path.stem), "lab.name"),
        kind=kind,
        mesh=meshes.pop(),
        boards=tuple(boards),
        gateway=gateway,
        features=_features(lab.get("features", []), "lab.features"),
        boot_s=_seconds(lab.get("boot_s", 20.0), "lab.boot_s"),
        join_s=_seconds(lab.get("join_s", 20.0), "lab.join_s"),
        prefix=_string(virtual.get("prefix", "mh-"), "virtual.prefix"),
        subnet=_string(virtual.get("subnet", "10.96.0.0/24"), "virtual.subnet"),
        gateway_args=tuple(_argv(gateway_table.get("args", []), "gateway.args")),
    )


def _board(
    raw: dict[str, Any], index: int, kind: str, defaults: dict[str, Any], flash: dict[str, Any]
) -> BoardSpec:
    where = "board %d" % (index + 1)
    config = merge(defaults, {k: v for k, v in raw.items() if k not in RESOURCE_KEYS})
    name = config.get("node_id")
    if not isinstance(name, str) or not name:
        raise LabFileError("%s: no node_id" % where)
    where = "board %s" % name
    serial = power = virtual = None
    if kind == "virtual":
        if "port" in raw or "power_on" in raw:
            raise LabFileError("%s: a virtual board has no port or power commands" % where)
        heapsize = raw.get("heapsize")
        if heapsize is not None:
            heapsize = _string(heapsize, where + ".heapsize")
        virtual = VirtualBoard(host=index + 1, heapsize=heapsize)
    else:
        port = raw.get("port")
        if not isinstance(port, str) or not port:
            raise LabFileError("%s: a real board needs a serial port (port = ...)" % where)
        serial = SerialPort(port, _int(raw.get("baud", DEFAULT_BAUD), where + ".baud"))
        if "power_on" in raw or "power_off" in raw:
            power = PowerPort(
                command_on=tuple(_argv(raw.get("power_on"), where + ".power_on")),
                command_off=tuple(_argv(raw.get("power_off"), where + ".power_off")),
                off_s=_seconds(raw.get("power_off_s", 1.0), where + ".power_off_s"),
            )
    return BoardSpec(
        name=name,
        config=config,
        serial=serial,
        power=power,
        virtual=virtual,
        chip=_string(raw.get("chip", flash.get("chip", "esp32")), where + ".chip"),
        image=_string(raw.get("image", flash.get("image", "")), where + ".image"),
        features=_features(raw.get("features", []), where + ".features"),
    )


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise LabFileError("[%s] must be a table" % key)
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise LabFileError("%s: expected a string, got %r" % (key, value))
    return value


def _int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LabFileError("%s: expected a positive integer, got %r" % (key, value))
    return value


def _seconds(value: Any, key: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise LabFileError("%s: expected a positive number of seconds, got %r" % (key, value))
    return float(value)


def _features(value: Any, key: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise LabFileError("%s: expected a list of names" % key)
    return frozenset(value)


def _argv(value: Any, key: str) -> list[str]:
    """A command as a string (split like a shell would) or a list of strings."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise LabFileError("%s: %s" % (key, exc)) from None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        raise LabFileError("%s: expected a command (string or list of strings)" % key)
    if key.endswith(("power_on", "power_off")) and not argv:
        raise LabFileError("%s: empty command" % key)
    return argv
