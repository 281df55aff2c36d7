"""Checks of a labgrid environment file before anything is built: every mistake is an
``EnvError`` naming the file and the key (``targets.vb-2.drivers.MeshDeployDriver.config.
data.sample_ms: ...``).

labgrid itself drops a key a class does not have with a warning (a misspelt ``boot_s`` would
silently become the default) and reports a missing one as a ``TypeError`` of the class; this
check makes both errors that name the key. For meshelect's own parts it also checks what only
the whole file shows: each board's node config (by the firmware's own rules, as the device
will read it), node ids that match their targets, one mesh for all boards, and a virtual
bench with a slot for every board.
"""

from __future__ import annotations

from typing import Any

import attr

BOARD_STRATEGY = "MeshNodeStrategy"


class EnvError(ValueError):
    """The environment file is missing, not YAML, or describes an impossible lab."""


def check_env(path: str) -> dict[str, Any]:
    """Load ``path`` as labgrid does (imports included) and check it; returns its data."""
    from labgrid.config import Config
    from labgrid.exceptions import InvalidConfigError, NoConfigFoundError

    try:
        config = Config(path)
    except (NoConfigFoundError, InvalidConfigError) as exc:
        raise EnvError("environment %s: %s" % (path, exc)) from None
    except OSError as exc:
        raise EnvError("environment %s: %s" % (path, exc.strerror or exc)) from None
    try:
        complete = _import_all(config)
        check_data(config.data, complete)
    except EnvError as exc:
        raise EnvError("environment %s: %s" % (path, exc)) from None
    return dict(config.data)


def _import_all(config: Any) -> bool:
    """Import the file's modules, as labgrid will (cached, so labgrid's import is free).

    A ``.py`` path is left to labgrid (running it twice would register its classes twice):
    then the classes it defines are unknown here, and False says the check is partial.
    """
    import importlib

    try:
        imports = config.get_imports()
    except KeyError as exc:
        raise EnvError("imports: %s" % exc.args[0]) from None
    complete = True
    for name in imports:
        if name.endswith(".py"):
            complete = False
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise EnvError("imports: cannot import %s: %s" % (name, exc)) from None
    return complete


def check_data(data: Any, complete: bool = True) -> None:
    """Check loaded environment data; ``complete``: every class it may name is registered."""
    from labgrid.exceptions import InvalidConfigError
    from labgrid.factory import TargetFactory, target_factory

    if not isinstance(data, dict):
        raise EnvError("expected a mapping at the top")
    targets = data.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise EnvError("targets: expected a mapping of targets")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise EnvError("options: expected a mapping")
    boards: dict[str, dict[str, Any]] = {}
    benches: dict[str, dict[str, Any]] = {}
    slots: dict[str, tuple[str, int]] = {}
    for name, target in targets.items():
        where = "targets.%s" % name
        if target is None:
            continue
        if not isinstance(target, dict):
            raise EnvError("%s: expected a mapping" % where)
        parts: dict[str, dict[str, Any]] = {}
        for kind, table in (
            ("resources", target_factory.resources),
            ("drivers", target_factory.drivers),
        ):
            try:
                items = TargetFactory._convert_to_named_list(target.get(kind, {}))
            except InvalidConfigError as exc:
                raise EnvError("%s.%s: %s" % (where, kind, exc)) from None
            for item in items:
                cls = item["cls"]
                key = "%s.%s.%s" % (where, kind, cls)
                if cls not in table:
                    if not complete:
                        continue
                    raise EnvError("%s: unknown %s class %s" % (key, kind[:-1], cls))
                args = {k: v for k, v in item.items() if k not in ("cls", "name", "bindings")}
                _check_attrs(key, table[cls], args)
                parts[cls] = args
        if BOARD_STRATEGY in parts:
            if "MeshDeployDriver" not in parts:
                raise EnvError("%s.drivers: a board needs MeshDeployDriver (its config)" % where)
            boards[name] = _node_config(
                "%s.drivers.MeshDeployDriver.config" % where,
                name,
                options.get("mesh_node", {}),
                parts["MeshDeployDriver"].get("config", {}),
            )
        if "VirtualBench" in parts:
            benches[name] = parts["VirtualBench"]
        if "MicroPythonUnixPort" in parts:
            port = parts["MicroPythonUnixPort"]
            if not port.get("netns"):
                slots[name] = (str(port.get("bench", "bench")), int(port["host"]))
    _check_mesh(boards, benches, slots)


def _check_attrs(key: str, cls: type, args: dict[str, Any]) -> None:
    fields = {a.name: a for a in attr.fields(cls) if a.init and a.name not in ("target", "name")}
    for arg in args:
        if arg not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise EnvError("%s.%s: unknown key (%s takes: %s)" % (key, arg, cls.__name__, known))
    for field in fields.values():
        if field.default is attr.NOTHING and field.name not in args:
            raise EnvError("%s.%s: missing (required by %s)" % (key, field.name, cls.__name__))
        if field.name in args and field.validator is not None:
            try:
                field.validator(None, field, args[field.name])
            except (TypeError, ValueError) as exc:
                raise EnvError("%s.%s: %s" % (key, field.name, _first_line(exc))) from None


def _node_config(key: str, name: str, shared: Any, own: Any) -> dict[str, Any]:
    from tools import firmware as firmware_tool

    if not isinstance(shared, dict):
        raise EnvError("options.mesh_node: expected a mapping")
    if not isinstance(own, dict):
        raise EnvError("%s: expected a mapping" % key)
    config = firmware_tool.merge(dict(shared), dict(own))
    config.setdefault("node_id", name)
    if config["node_id"] != name:
        raise EnvError(
            "%s.node_id: %r, but the target is %r (the console's status lines name the node, "
            "so they must agree)" % (key, config["node_id"], name)
        )
    try:
        return firmware_tool.device_config(config)
    except firmware_tool.ToolError as exc:
        text = str(exc)
        detail = text[len("config: ") :] if text.startswith("config: ") else text
        raise EnvError("%s.%s" % (key, detail)) from None


def _check_mesh(
    boards: dict[str, dict[str, Any]],
    benches: dict[str, dict[str, Any]],
    slots: dict[str, tuple[str, int]],
) -> None:
    meshes = {name: str(config.get("mesh")) for name, config in boards.items()}
    if len(set(meshes.values())) > 1:
        raise EnvError("boards are in different meshes: %s" % dict(sorted(meshes.items())))
    taken: dict[tuple[str, int], str] = {}
    for name, (bench, host) in sorted(slots.items()):
        where = "targets.%s.resources.MicroPythonUnixPort" % name
        if bench not in benches:
            raise EnvError("%s.bench: no target %r with a VirtualBench" % (where, bench))
        size = int(benches[bench].get("boards", 0))
        if not 1 <= host <= size:
            raise EnvError("%s.host: %d, but bench %s has slots 1..%d" % (where, host, bench, size))
        if (bench, host) in taken:
            raise EnvError("%s.host: slot %d is also %s's" % (where, host, taken[(bench, host)]))
        taken[(bench, host)] = name
    for bench, spec in benches.items():
        mesh = spec.get("mesh")
        if meshes and mesh not in meshes.values():
            raise EnvError(
                "targets.%s.resources.VirtualBench.mesh: %r, but the boards are in %r"
                % (bench, mesh, next(iter(meshes.values())))
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
