"""The HIL harness without boards: lab files, the board strategy (fake drivers), and the real
drivers on real local things (commands, processes, files, a pty, an HTTP server)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from hil.drivers import (
    AlwaysOnPowerDriver,
    CommandPowerDriver,
    ConsoleDriver,
    EsptoolFirmwareDriver,
    FileLines,
    GatewayDriver,
    HilError,
    HilTimeout,
    ProcessPowerDriver,
    SerialLines,
    UnixFirmwareDriver,
    VirtualProcess,
    manifest_hash,
)
from hil.fake import FakeBoard
from hil.labfile import LabFileError, load_lab, parse_lab
from hil.nsthread import NamespaceError, NamespaceThread
from hil.resources import BoardSpec, Gateway, PowerPort, SerialPort, VirtualBoard
from hil.strategy import BoardStrategy, MeshStrategy, StrategyBroken
from tests.paths import REPO_ROOT

LABS = REPO_ROOT / "hil" / "labs"

# ------------------------------------------------------------------------------------ lab files


def test_shipped_labs_parse() -> None:
    virtual = load_lab(LABS / "virtual-3.toml")
    assert virtual.kind == "virtual" and virtual.mesh == "hil"
    assert virtual.names() == ["vb-1", "vb-2", "vb-3"]
    assert [b.virtual for b in virtual.boards] == [
        VirtualBoard(1),
        VirtualBoard(2),
        VirtualBoard(3),
    ]
    assert virtual.has("power-cycle") and not virtual.has("wifi")
    assert virtual.board("vb-2").config["hw"]["battery"] == 900
    assert virtual.board("vb-2").config["data"] == {"sample_ms": 250}  # [defaults] merged

    real = load_lab(LABS / "example-esp32.toml")
    assert real.kind == "real" and real.gateway == Gateway("http://192.168.50.2:8470")
    esp1, esp2, esp3 = real.boards
    assert esp1.power == PowerPort(
        ("uhubctl", "-l", "1-1", "-p", "1", "-a", "on"),
        ("uhubctl", "-l", "1-1", "-p", "1", "-a", "off"),
        off_s=2.0,
    )
    assert esp3.power is not None and esp3.power.command_on == ("relayctl", "--channel", "3", "on")
    assert esp3.chip == "esp32s3" and esp2.chip == "esp32"
    assert "port" not in esp1.config and "power_on" not in esp1.config  # resources stay out
    assert esp1.config["wifi"]["ssid"] == "hil-bench"
    assert real.has("native-usb") is False  # only one board has it


BASE_REAL = {"lab": {"type": "real"}, "board": [{"node_id": "a", "port": "/dev/ttyUSB0"}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lab": {"type": "cloud"}, "board": [{}]}, "lab.type"),
        ({"lab": {"type": "real"}}, "no [[board]]"),
        ({"lab": {"type": "real"}, "board": ["x"]}, "expected a table"),
        ({"lab": {"type": "real"}, "board": [{"port": "/dev/x"}]}, "no node_id"),
        ({"lab": {"type": "real"}, "board": [{"node_id": "a"}]}, "needs a serial port"),
        (
            {"lab": {"type": "virtual"}, "board": [{"node_id": "a", "port": "/dev/x"}]},
            "virtual board has no port",
        ),
        (
            {
                "lab": {"type": "real"},
                "board": [{"node_id": "a", "port": "/x"}, {"node_id": "a", "port": "/y"}],
            },
            "share a node_id",
        ),
        (
            {
                "lab": {"type": "real"},
                "board": [{"node_id": "a", "port": "/x"}, {"node_id": "b", "port": "/x"}],
            },
            "share a serial port",
        ),
        (
            {
                "lab": {"type": "virtual"},
                "board": [{"node_id": "a", "mesh": "m1"}, {"node_id": "b", "mesh": "m2"}],
            },
            "different meshes",
        ),
        ({**BASE_REAL, "lab": {"type": "real", "features": "udp"}}, "lab.features"),
        ({**BASE_REAL, "lab": {"type": "real", "boot_s": -1}}, "lab.boot_s"),
        ({**BASE_REAL, "gateway": {"url": "ftp://x"}}, "gateway.url"),
        ({**BASE_REAL, "gateway": "x"}, "[gateway] must be a table"),
        (
            {"lab": {"type": "real"}, "board": [{"node_id": "a", "port": "/x", "power_on": "on"}]},
            "power_off",
        ),
        (
            {
                "lab": {"type": "real"},
                "board": [{"node_id": "a", "port": "/x", "power_on": "", "power_off": "x"}],
            },
            "empty command",
        ),
        (
            {
                "lab": {"type": "real"},
                "board": [{"node_id": "a", "port": "/x", "power_on": "'x", "power_off": "x"}],
            },
            "power_on",
        ),
        ({"lab": {"type": "real"}, "board": [{"node_id": "a", "port": "/x", "baud": 0}]}, "baud"),
    ],
)
def test_bad_lab_files_are_clear_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(LabFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_lab(data, Path("lab.toml"))


def test_unreadable_lab_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LabFileError, match=r"nope\.toml"):
        load_lab(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[lab\n")
    with pytest.raises(LabFileError, match=r"broken\.toml is not valid TOML"):
        load_lab(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LabFileError, match=r"binary\.toml"):
        load_lab(binary)


# ------------------------------------------------------------------------------------- strategy


def strategy_for(board: FakeBoard) -> BoardStrategy:
    return BoardStrategy(
        board.name, board.firmware, board.power, board.console, boot_s=0.2, join_s=0.2
    )


def test_strategy_walks_up_through_every_state_and_installs_once() -> None:
    board = FakeBoard("a", leader="a")
    strategy = strategy_for(board)
    strategy.transition("joined")
    assert strategy.history == ["flashed", "booted", "joined"]
    assert board.log == ["install", "off", "mark", "on"]
    strategy.transition("joined")  # already there: nothing happens
    assert board.log == ["install", "off", "mark", "on"]
    strategy.transition("off")
    strategy.transition("joined")  # flashed once per session: no second install
    assert board.log == ["install", "off", "mark", "on", "off", "off", "mark", "on"]
    assert board.boots == 2


def test_strategy_powers_a_real_board_to_install_it() -> None:
    board = FakeBoard("a", needs_power=True)
    strategy_for(board).transition("flashed")
    assert board.log == ["on", "install", "off"]
    assert not board.powered


def test_an_always_on_board_is_installed_and_joins_without_power_switching() -> None:
    board = FakeBoard("a", leader="a", needs_power=True, switchable=False)
    board.powered = True  # always
    strategy = strategy_for(board)
    strategy.transition("joined")
    assert board.log == ["on", "install", "mark", "on"]
    assert strategy.state == "joined"


def test_booted_on_a_joined_board_does_not_power_cycle_it() -> None:
    board = FakeBoard("a", leader="a")
    strategy = strategy_for(board)
    strategy.transition("joined")
    before = list(board.log)
    strategy.transition("booted")
    assert board.log == before and strategy.state == "booted"


def test_strategy_failure_is_sticky_and_later_calls_fail_fast() -> None:
    board = FakeBoard("a", leader="a")
    board.fail["install"] = HilError("esptool: no serial port")
    strategy = strategy_for(board)
    with pytest.raises(HilError, match="no serial port"):
        strategy.transition("joined")
    assert isinstance(strategy.broken, HilError)
    del board.fail["install"]
    calls = len(board.log)
    with pytest.raises(StrategyBroken, match="no serial port"):
        strategy.transition("off")
    assert len(board.log) == calls  # the board was not touched again


def test_a_board_that_never_joins_times_out_with_its_name() -> None:
    board = FakeBoard("lonely", leader=None)
    strategy = strategy_for(board)
    with pytest.raises(HilTimeout, match="lonely: no leader"):
        strategy.transition("joined")
    assert strategy.state == "booted"
    with pytest.raises(StrategyBroken):
        strategy.transition("booted")


def test_an_unknown_state_is_the_callers_bug_not_the_boards() -> None:
    strategy = strategy_for(FakeBoard("a"))
    with pytest.raises(ValueError, match="unknown state"):
        strategy.transition("running")
    assert strategy.broken is None
    strategy.force("booted")
    assert strategy.state == "booted"


def test_mesh_strategy_powers_every_board_before_waiting_for_a_leader() -> None:
    boards = {name: FakeBoard(name) for name in ("b", "a", "c")}

    # A leader exists only once every board is powered (as in a real mesh forming).
    def maybe_lead() -> None:
        if all(board.powered for board in boards.values()):
            for board in boards.values():
                board.leader = "a"

    for board in boards.values():
        original = board.power.on

        def on(original: Any = original) -> None:
            original()
            maybe_lead()

        board.power.on = on  # type: ignore[method-assign]
    mesh = MeshStrategy({name: strategy_for(board) for name, board in boards.items()})
    assert list(mesh) == ["a", "b", "c"] and len(mesh) == 3
    mesh.transition("joined")
    assert mesh.states() == {"a": "joined", "b": "joined", "c": "joined"}
    assert mesh.broken == {}


# ---------------------------------------------------------------------------------------- power


def test_command_power_driver_runs_the_commands(tmp_path: Path) -> None:
    flag = tmp_path / "powered"
    port = PowerPort(("touch", str(flag)), ("rm", "-f", str(flag)), off_s=0.01)
    power = CommandPowerDriver(port, "a")
    power.on()
    assert flag.exists()
    power.off()
    assert not flag.exists()
    power.cycle()
    assert flag.exists()


def test_power_command_failures_say_which_board_and_why(tmp_path: Path) -> None:
    failing = CommandPowerDriver(
        PowerPort(("sh", "-c", "echo relay busy >&2; exit 3"), ("true",)), "esp-2"
    )
    with pytest.raises(HilError, match=r"esp-2: power on failed \(exit 3\): relay busy"):
        failing.on()
    missing = CommandPowerDriver(PowerPort((str(tmp_path / "no-such-tool"),), ("true",)), "x")
    with pytest.raises(HilError, match="no-such-tool"):
        missing.on()
    with pytest.raises(HilError, match="no power port"):
        AlwaysOnPowerDriver("esp-9").off()
    AlwaysOnPowerDriver("esp-9").on()


def sleeper_spawn(
    argv: Sequence[str], cwd: Path, out: IO[Any]
) -> subprocess.Popen[Any]:  # stands in for the micropython command: a real process
    return subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_virtual_power_is_a_process_start_and_sigkill(tmp_path: Path) -> None:
    process = VirtualProcess(tmp_path, sleeper_spawn, "micropython")
    power = ProcessPowerDriver(process)
    with pytest.raises(HilError, match="flash it first"):
        power.on()
    (tmp_path / "main.py").write_text("")
    try:
        power.on()
        power.on()  # already on: still one process
        assert process.running and process.starts == 1
        first = process.process
        power.off()
        assert not process.running
        assert first is not None and first.returncode == -9  # power loss, not a clean exit
        power.on()
        assert process.running and process.starts == 2
    finally:
        process.kill()


def test_virtual_firmware_install_writes_the_device_config(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "app").mkdir(parents=True)
    (build / "main.py").write_text("print('hi')\n")
    (build / "app" / "x.mpy").write_bytes(b"M")
    board = BoardSpec("vb-1", {"node_id": "vb-1", "mesh": "m", "hw": {"battery": 500}})
    process = VirtualProcess(tmp_path / "vb-1", sleeper_spawn, "micropython")
    firmware = UnixFirmwareDriver(board, build, process, "10.96.0.1")
    firmware.install()
    firmware.install()  # again: links replaced, not failing
    folder = tmp_path / "vb-1"
    assert (folder / "main.py").resolve() == (build / "main.py").resolve()
    config = json.loads((folder / "config.json").read_text())
    assert config["udp"] == {"interface": "10.96.0.1"}
    assert config["hw"] == {"battery": 500, "kind": "unix"}
    assert config["status_file"] == str(folder / "status.json")

    bad = BoardSpec("x" * 20, {"node_id": "x" * 20})
    with pytest.raises(HilError, match="node_id"):
        UnixFirmwareDriver(bad, build, process, "10.96.0.1").install()


def test_real_firmware_driver_releases_the_console_and_reports_tool_errors(
    tmp_path: Path,
) -> None:
    released = []
    board = BoardSpec(
        "esp-1",
        {"node_id": "esp-1", "mesh": "m"},
        serial=SerialPort("/dev/hil-no-such-port"),
        image=str(tmp_path / "missing.bin"),
    )
    firmware = EsptoolFirmwareDriver(
        board, tmp_path / "build", log=print, release=lambda: released.append(1)
    )
    assert firmware.needs_power
    with pytest.raises(HilError, match=r"esp-1: image .*missing\.bin does not exist"):
        firmware.install()
    assert released == [1]
    no_image = EsptoolFirmwareDriver(BoardSpec("esp-2", {}, serial=board.serial), tmp_path, print)
    with pytest.raises(HilError, match="esp-2: no build at"):
        no_image.install()
    with pytest.raises(HilError, match="no serial port"):
        EsptoolFirmwareDriver(BoardSpec("esp-3", {}), tmp_path, print)


def test_manifest_hash_names_the_files_not_their_order() -> None:
    a = {"files": [{"path": "a", "sha256": "1"}, {"path": "b", "sha256": "2"}]}
    b = {"files": [{"path": "b", "sha256": "2"}, {"path": "a", "sha256": "1"}]}
    c = {"files": [{"path": "b", "sha256": "3"}, {"path": "a", "sha256": "1"}]}
    assert manifest_hash(a) == manifest_hash(b) != manifest_hash(c)


# -------------------------------------------------------------------------------------- console


def status_line(node: str, **fields: Any) -> bytes:
    return b"status " + json.dumps({"node": node, **fields}).encode() + b"\n"


def test_console_parses_status_lines_and_survives_garbage(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    console = ConsoleDriver("fw-1", FileLines(log))
    assert console.status() is None  # no file yet
    log.write_bytes(
        b"MicroPython v1.29 boot\n"
        + b"role follower term 0 leader None\n"
        + status_line("fw-1", leader=None, term=0)
        + b"status {not json\n"
        + status_line("fw-2", leader="fw-2")  # another node's line on this console: noise
        + b"\xff\xfe garbage \x00\n"
        + b"status " + b"x" * 20000 + b"\n"
        + b"status {\"node\": \"fw-1\", \"le"  # half a line: waits for the rest
    )  # fmt: skip
    assert console.status() == {"node": "fw-1", "leader": None, "term": 0}
    assert console.bad_lines == 3
    assert console.roles == ["role follower term 0 leader None"]
    with log.open("ab") as f:
        f.write(b'ader": "fw-1", "term": 2}\n')
    assert console.wait_status(lambda s: s["leader"] == "fw-1", timeout=1.0)["term"] == 2


def test_console_mark_forgets_the_previous_boot(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(status_line("fw-1", boot=1))
    console = ConsoleDriver("fw-1", FileLines(log))
    assert console.status() == {"node": "fw-1", "boot": 1}
    console.mark()
    assert console.status() is None
    with pytest.raises(HilTimeout, match=r"fw-1: no status line within 0 s; console tail:\n"):
        console.wait_status(timeout=0.05, what="status line")
    with log.open("ab") as f:
        f.write(status_line("fw-1", boot=2))
    assert console.wait_status(timeout=1.0)["boot"] == 2


def test_console_drops_an_endless_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"x" * 40000)
    console = ConsoleDriver("fw-1", FileLines(log))
    assert console.read() == []
    with log.open("ab") as f:
        f.write(b"\n" + status_line("fw-1", boot=3))
    console.read()
    assert console.last_status == {"node": "fw-1", "boot": 3}


def test_serial_console_reads_a_real_tty() -> None:
    pytest.importorskip("serial")
    master, slave = os.openpty()
    try:
        lines = SerialLines(SerialPort(os.ttyname(slave), 115200))
        console = ConsoleDriver("esp-1", lines)
        assert console.status() is None  # opens the port (opening flushes what came before)
        os.write(master, b"boot noise\r\n" + status_line("esp-1", leader="esp-1"))
        status = console.wait_status(timeout=2.0)
        assert status["leader"] == "esp-1"
        assert "boot noise" in console.tail
        lines.close()
    finally:
        os.close(master)
        os.close(slave)


def test_serial_console_on_a_missing_port_is_quiet_and_says_why() -> None:
    pytest.importorskip("serial")
    console = ConsoleDriver("esp-1", SerialLines(SerialPort("/dev/hil-no-such-port", 115200)))
    assert console.status() is None
    with pytest.raises(HilTimeout, match="hil-no-such-port"):
        console.wait_status(timeout=0.05)


# -------------------------------------------------------------------------------------- gateway


class FakeApi(http.server.BaseHTTPRequestHandler):
    """A real HTTP server with canned gateway answers (the gateway itself is tested in
    tests/test_gateway_http.py; here only the driver's side is)."""

    routes: ClassVar[dict[str, tuple[int, bytes]]] = {
        "/healthz": (200, b'{"ok": true}'),
        "/api/meshes/hil": (200, b'{"leader": "vb-2", "term": 3}'),
        "/api/meshes/hil/readings": (
            200,
            json.dumps(
                [
                    {"node": "vb-1", "boot": 1, "seq": 2},
                    {"node": "vb-1", "boot": 1, "seq": 1},
                    {"node": "vb-2", "boot": 4, "seq": 1},
                ]
            ).encode(),
        ),
        "/api/meshes/broken": (500, b'{"error": "boom"}'),
        "/api/meshes/garbage": (200, b"<html>"),
    }

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path.split("?")[0], (404, b'{"error": "no"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_gateway_driver_reads_leader_and_readings(api_url: str) -> None:
    gateway = GatewayDriver(Gateway(api_url))
    assert gateway.healthy()
    gateway.wait_healthy(1.0)
    assert gateway.leader("hil") == ("vb-2", 3)
    assert gateway.leader("unknown") == (None, 0)  # 404: no batch yet
    assert gateway.stored("hil") == {("vb-1", 1): [1, 2], ("vb-2", 4): [1]}
    with pytest.raises(HilError, match="HTTP 500"):
        gateway.mesh("broken")
    with pytest.raises(HilError, match="garbage"):
        gateway.mesh("garbage")
    gateway.close()


def test_gateway_driver_unreachable_is_a_clear_error(api_url: str) -> None:
    gone = GatewayDriver(Gateway("http://127.0.0.1:9"))  # discard port: nothing listens
    assert not gone.healthy()
    with pytest.raises(HilTimeout, match=r"127\.0\.0\.1:9"):
        gone.wait_healthy(0.05)


def test_namespace_thread_refuses_a_missing_namespace() -> None:
    thread = NamespaceThread("mh-no-such-namespace")
    try:
        with pytest.raises(NamespaceError, match="mh-no-such-namespace"):
            thread.call(int, "1")
    finally:
        thread.close()
