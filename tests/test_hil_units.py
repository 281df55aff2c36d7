"""The HIL harness without boards: environment checks, the board strategy on labgrid targets
built in Python (labgrid's fake console, small fakes for power, flash and deploy), and the
real drivers on real local things (a pty as serial port, an HTTP server, a MicroPython
process in a namespace, commands)."""

from __future__ import annotations

import copy
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attr
import pytest
from labgrid import Target
from labgrid.driver import SerialDriver
from labgrid.driver.common import Driver
from labgrid.driver.fake import FakeCommandDriver, FakeConsoleDriver, FakeFileTransferDriver
from labgrid.factory import target_factory
from labgrid.protocol import BootstrapProtocol, PowerProtocol
from labgrid.resource import RawSerialPort
from labgrid.strategy import StrategyError

from hil.drivers.agent import MeshAgentDriver
from hil.drivers.broker import MeshBrokerDriver
from hil.drivers.common import HilError, HilTimeout, manifest_hash
from hil.drivers.console import MeshConsoleDriver
from hil.drivers.firmware import EsptoolDriver, MeshDeployDriver
from hil.drivers.gateway import MeshGatewayDriver
from hil.drivers.unixboard import MicroPythonUnixDriver
from hil.envcheck import EnvError, check_data, check_env
from hil.nsthread import NamespaceError, NamespaceThread
from hil.resources import MeshBroker, MeshGateway, MicroPythonUnixPort
from hil.strategy import MeshNodeStrategy
from testkit.mpy import micropython_path
from tests.paths import REPO_ROOT

ENVS = REPO_ROOT / "hil" / "envs"

# ------------------------------------------------------------------------------ environment files


def test_shipped_environments_pass_the_check() -> None:
    for path in sorted(ENVS.glob("*.yaml")):
        data = check_env(str(path))
        assert data["targets"], path
    virtual = check_env(str(ENVS / "virtual-3.yaml"))
    assert virtual["targets"]["vb-2"]["resources"]["MicroPythonUnixPort"]["host"] == 2


def test_the_example_bench_binds_every_driver_labgrids_way() -> None:
    """Targets are built (bindings resolved), nothing activated: no hardware needed."""
    from labgrid import Environment

    env = Environment(str(ENVS / "bench-esp32.yaml"))
    strategy = env.get_target("esp-1").get_strategy()
    assert type(strategy.power).__name__ == "USBPowerDriver"
    assert type(strategy.flash).__name__ == "EsptoolDriver"
    assert type(strategy.console.console).__name__ == "SerialDriver"
    assert strategy.deploy.on_serial
    assert type(env.get_target("esp-3").get_strategy().power).__name__ == "ExternalPowerDriver"
    agent = env.get_target("pi-1").get_driver("MeshAgentDriver", activate=False)
    assert agent.commands_for("start") == ["sudo systemctl start meshelect-agent.service"]
    env.cleanup()


GOOD: dict[str, Any] = {
    "options": {"mesh_node": {"mesh": "m", "data": {"sample_ms": 250}}},
    "targets": {
        "bench": {"resources": {"VirtualBench": {"boards": 2, "mesh": "m"}}},
        "vb-1": {
            "resources": {"MicroPythonUnixPort": {"host": 1}},
            "drivers": {
                "MicroPythonUnixDriver": {},
                "MeshConsoleDriver": {},
                "MeshDeployDriver": {"config": {"hw": {"kind": "unix"}}},
                "MeshNodeStrategy": {"boot_s": 5.0},
            },
        },
    },
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at dotted ``path`` replaced (``None`` deletes it)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


BOARD = "targets.vb-1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"targets": {}}, "targets: expected a mapping of targets"),
        (changed(BOARD + ".drivers.MeshNodeStrategy.boot_s", "5"), r"boot_s: .*float"),
        (changed(BOARD + ".drivers.MeshNodeStrategy.join", 5.0), r"join: unknown key"),
        (changed(BOARD + ".drivers.Nope", {}), r"drivers\.Nope: unknown driver class Nope"),
        (changed(BOARD + ".resources.MicroPythonUnixPort.host", None), r"\.host: missing"),
        (changed(BOARD + ".resources.MicroPythonUnixPort.host", 3), "bench bench has slots 1..2"),
        (changed(BOARD + ".resources.MicroPythonUnixPort.bench", "b2"), "no target 'b2'"),
        (changed(BOARD + ".drivers.MeshDeployDriver", None), "a board needs MeshDeployDriver"),
        (
            changed(BOARD + ".drivers.MeshDeployDriver.config.node_id", "vb-9"),
            r"config\.node_id: 'vb-9', but the target is 'vb-1'",
        ),
        (
            changed(BOARD + ".drivers.MeshDeployDriver.config.transport", "lora"),
            r"MeshDeployDriver\.config\.transport: expected udp or mqtt",
        ),
        (changed("options.mesh_node.data.sample_ms", -1), r"config\.data\.sample_ms"),
        (changed("targets.bench.resources.VirtualBench.mesh", "x"), "but the boards are in 'm'"),
        (changed(BOARD + ".drivers", ["x"]), r"targets\.vb-1\.drivers: invalid list item"),
    ],
)
def test_environment_mistakes_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvError, match=message):
        check_data(data)


def test_the_good_environment_passes() -> None:
    check_data(GOOD)


# ------------------------------------------------------------------------------------- strategy


@target_factory.reg_driver
@attr.s(eq=False)
class UnitPowerDriver(Driver, PowerProtocol):
    """Power that makes the fake console print a status line while on (like a booting board)."""

    log: list[str] = attr.ib(factory=list)
    leader: str = attr.ib(default="")
    boots: int = attr.ib(default=0)

    @Driver.check_active
    def on(self) -> None:
        self.log.append("on")
        self.boots += 1
        console: Any = self.target.get_driver(FakeConsoleDriver)
        status = {"node": self.target.name, "boot": self.boots, "leader": self.leader or None}
        console.rxq.insert(0, b"boot noise\nstatus " + json.dumps(status).encode() + b"\n")

    @Driver.check_active
    def off(self) -> None:
        self.log.append("off")

    @Driver.check_active
    def cycle(self) -> None:
        self.off()
        self.on()


@target_factory.reg_driver
@attr.s(eq=False)
class UnitFlashDriver(Driver, BootstrapProtocol):
    log: list[str] = attr.ib(factory=list)
    fail: str = attr.ib(default="")

    @Driver.check_active
    def load(self, filename: str | None = None) -> None:
        self.log.append("flash")
        if self.fail:
            raise HilError("board %s: flashing failed: %s" % (self.target.name, self.fail))


@target_factory.reg_driver
@attr.s(eq=False)
class UnitDeployDriver(MeshDeployDriver):
    bindings: ClassVar[dict[str, Any]] = {}
    on_serial = False
    log: list[str] = attr.ib(factory=list)

    @Driver.check_active
    def deploy(self) -> list[str]:
        self.log.append("deploy")
        return []


def fake_board(name: str = "a", leader: str = "a", fail: str = "") -> MeshNodeStrategy:
    target = Target(name)
    log: list[str] = []
    FakeConsoleDriver(target, None)
    UnitPowerDriver(target, None, log=log, leader=leader)
    UnitFlashDriver(target, None, log=log, fail=fail)
    UnitDeployDriver(target, None, log=log)
    MeshConsoleDriver(target, None)
    strategy = MeshNodeStrategy(target, None, boot_s=0.3, join_s=0.3)
    strategy.unit_log = log  # type: ignore[attr-defined]
    return strategy


def test_strategy_walks_up_through_every_state_and_installs_once() -> None:
    strategy = fake_board()
    log = strategy.unit_log  # type: ignore[attr-defined]
    strategy.transition("joined")
    assert strategy.history == ["flashed", "booted", "joined"]
    assert log == ["flash", "deploy", "off", "on"]
    assert strategy.console.status() is not None
    strategy.transition("joined")  # already there: nothing happens
    strategy.transition("off")
    strategy.transition("joined")  # installed once per session
    assert log == ["flash", "deploy", "off", "on", "off", "off", "on"]
    assert strategy.console.status()["boot"] == 2  # type: ignore[index]
    strategy.reflash()  # mid-run: installed again, left powered off
    assert log[-4:] == ["off", "flash", "deploy", "off"]
    assert strategy.node_state == "flashed"


def test_booted_on_a_joined_board_does_not_power_cycle_it() -> None:
    strategy = fake_board()
    strategy.transition("joined")
    log = list(strategy.unit_log)  # type: ignore[attr-defined]
    strategy.transition("booted")
    assert strategy.unit_log == log and strategy.node_state == "booted"  # type: ignore[attr-defined]


def test_strategy_failure_is_sticky_names_the_board_and_touches_nothing_again() -> None:
    strategy = fake_board(name="esp-1", fail="image x.bin does not exist")
    with pytest.raises(HilError, match=r"esp-1: flashing failed: image x\.bin"):
        strategy.transition("joined")
    assert isinstance(strategy.broken, HilError)
    calls = len(strategy.unit_log)  # type: ignore[attr-defined]
    with pytest.raises(StrategyError, match=r"board esp-1 is broken since .*image x\.bin"):
        strategy.transition("off")
    assert len(strategy.unit_log) == calls  # type: ignore[attr-defined]


def test_a_board_that_never_joins_times_out_with_its_name() -> None:
    strategy = fake_board(name="lonely", leader="")
    with pytest.raises(HilTimeout, match="lonely: no leader in its status"):
        strategy.transition("joined")
    assert strategy.node_state == "booted"
    with pytest.raises(StrategyError):
        strategy.transition("booted")


def test_an_unknown_state_is_the_callers_bug_not_the_boards() -> None:
    strategy = fake_board()
    with pytest.raises(ValueError, match="unknown state"):
        strategy.transition("running")
    assert strategy.broken is None
    strategy.force("booted")
    assert strategy.node_state == "booted"


# -------------------------------------------------------------------------------------- console


def status_line(node: str, **fields: Any) -> bytes:
    return b"status " + json.dumps({"node": node, **fields}).encode() + b"\n"


def console_on_fake(name: str = "fw-1") -> tuple[MeshConsoleDriver, Any]:
    target = Target(name)
    fake = FakeConsoleDriver(target, None)
    console = MeshConsoleDriver(target, None)
    target.activate(console)
    return console, fake


def test_console_parses_status_lines_and_survives_garbage() -> None:
    console, fake = console_on_fake()
    assert console.status() is None
    fake.rxq.insert(
        0,
        b"MicroPython v1.29 boot\n"
        + b"role follower term 0 leader None\n"
        + status_line("fw-1", leader=None, term=0)
        + b"status {not json\n"
        + status_line("fw-2", leader="fw-2")  # another node's line on this console: noise
        + b"\xff\xfe garbage \x00\n"
        + b"status " + b"x" * 20000 + b"\n"
        + b"status {\"node\": \"fw-1\", \"le",  # half a line: waits for the rest
    )  # fmt: skip
    assert console.status() == {"node": "fw-1", "leader": None, "term": 0}
    assert console.bad_lines == 3
    assert console.roles == ["role follower term 0 leader None"]
    fake.rxq.insert(0, b'ader": "fw-1", "term": 2}\n')
    assert console.wait_status(lambda s: s["leader"] == "fw-1", timeout=1.0)["term"] == 2
    assert console.lines_since(1)[0] == "role follower term 0 leader None"
    assert "MicroPython v1.29 boot" in console.log_path.read_text()


def test_console_mark_forgets_the_previous_boot() -> None:
    console, fake = console_on_fake()
    fake.rxq.insert(0, status_line("fw-1", boot=1))
    assert console.status() == {"node": "fw-1", "boot": 1}
    console.mark()
    assert console.status() is None
    with pytest.raises(HilTimeout, match=r"fw-1: no status line within 0 s; console tail:\n"):
        console.wait_status(timeout=0.05, what="status line")
    fake.rxq.insert(0, status_line("fw-1", boot=2))
    assert console.wait_status(timeout=1.0)["boot"] == 2


def test_console_over_labgrids_serial_driver_on_a_real_tty() -> None:
    master, slave = os.openpty()
    try:
        target = Target("esp-1")
        RawSerialPort(target, None, port=os.ttyname(slave), speed=115200)
        SerialDriver(target, None)
        console = MeshConsoleDriver(target, None)
        target.activate(console)
        assert console.status() is None
        os.write(master, b"boot noise\r\n" + status_line("esp-1", leader="esp-1"))
        assert console.wait_status(timeout=2.0)["leader"] == "esp-1"
        assert "boot noise" in console.lines
        target.cleanup()
    finally:
        os.close(master)
        os.close(slave)


# ------------------------------------------------------------------------------ flash and deploy


def test_esptool_driver_reports_a_missing_image_with_the_board(tmp_path: Path) -> None:
    target = Target("esp-1")
    RawSerialPort(target, None, port="/dev/hil-no-such-port")
    flash = EsptoolDriver(target, None, image=str(tmp_path / "missing.bin"))
    target.activate(flash)
    with pytest.raises(HilError, match=r"esp-1: flashing failed: image .*missing\.bin does not"):
        flash.load()
    image = tmp_path / "mp.bin"
    image.write_bytes(b"\0" * 8192)
    with pytest.raises(HilError, match=r"esp-1: flashing failed: serial port /dev/hil-no-such"):
        flash.load(str(image))
    empty = Target("esp-2")
    RawSerialPort(empty, None, port="/dev/x")
    nothing = EsptoolDriver(empty, None)
    empty.activate(nothing)
    with pytest.raises(HilError, match="esp-2: EsptoolDriver has no image"):
        nothing.load()


def test_deploy_driver_checks_the_node_config_by_the_firmwares_rules() -> None:
    target = Target("esp-1")
    RawSerialPort(target, None, port="/dev/hil-no-such-port")
    deploy = MeshDeployDriver(target, None, config={"mesh": "m", "data": {"sample_ms": 500}})
    assert deploy.on_serial and deploy.mesh == "m"
    device = deploy.device_config()
    assert device["node_id"] == "esp-1" and device["data"]["sample_ms"] == 500
    bad = Target("esp-2")
    RawSerialPort(bad, None, port="/dev/x")
    broken = MeshDeployDriver(bad, None, config={"heartbeat_ms": 0})
    with pytest.raises(HilError, match="board esp-2: config: heartbeat_ms: "):
        broken.device_config()


# --------------------------------------------------------------------------- a virtual board


def test_virtual_board_flash_refuses_an_interpreter_that_is_not_micropython(
    tmp_path: Path,
) -> None:
    target = Target("vb-1")
    MicroPythonUnixPort(
        target, None, host=1, netns="x", address="10.0.0.1", folder=str(tmp_path / "f"),
        interpreter=str(tmp_path / "no-such-micropython"),
    )  # fmt: skip
    board = MicroPythonUnixDriver(target, None)
    target.activate(board)
    with pytest.raises(HilError, match=r"vb-1: cannot flash: the interpreter .*no-such"):
        board.load()
    with pytest.raises(HilError, match=r"vb-1: cannot flash: /bin/true is not a MicroPython"):
        board.load("/bin/true")
    with pytest.raises(HilError, match="holds no firmware"):
        board.on()


@pytest.mark.netns
@pytest.mark.micropython
def test_virtual_board_power_is_a_process_in_its_namespace_and_sigkill(
    tmp_path: Path, lab_factory: Any
) -> None:
    lab = lab_factory("mu-", "10.95.0.0/24", hosts=1)
    target = Target("vb-1")
    MicroPythonUnixPort(
        target, None, host=1, netns=lab.ns(1), address=lab.address(1),
        folder=str(tmp_path / "flash"), interpreter=str(micropython_path()),
    )  # fmt: skip
    board = MicroPythonUnixDriver(target, None)
    console = MeshConsoleDriver(target, None)
    target.activate(console)
    board.load()
    (tmp_path / "flash" / "main.py").write_text(
        "import time\nprint('up')\nwhile True:\n    time.sleep(1)\n"
    )
    (tmp_path / "flash" / "boot_count").write_text("3\n")
    board.on()
    board.on()  # already on: still one process
    assert board.running and board.starts == 1
    assert poll_lines(console, "up")
    first = board.process
    board.off()
    assert first is not None and first.returncode == -9  # power loss, not a clean exit
    board.cycle()
    assert board.starts == 2 and board.running
    assert poll_lines(console, "up")
    assert console.log_path.read_text().count("up\n") == 2  # one console over both boots
    board.load()  # erase: the files and the boot counter are gone
    assert not board.running and not (tmp_path / "flash" / "boot_count").exists()
    target.cleanup()


def poll_lines(console: MeshConsoleDriver, text: str, count: int = 1) -> bool:
    from testkit.waiting import poll_until

    seen: list[str] = []

    def enough() -> bool:
        seen.extend(console.read())
        return seen.count(text) >= count

    return bool(poll_until(enough, 10.0, 0.05))


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
    target = Target("gateway")
    MeshGateway(target, None, url=api_url)
    gateway = MeshGatewayDriver(target, None)
    target.activate(gateway)  # waits until the API answers
    assert gateway.healthy()
    assert gateway.leader("hil") == ("vb-2", 3)
    assert gateway.leader("unknown") == (None, 0)  # 404: no batch yet
    assert gateway.stored("hil") == {("vb-1", 1): [1, 2], ("vb-2", 4): [1]}
    with pytest.raises(HilError, match="HTTP 500"):
        gateway.mesh("broken")
    with pytest.raises(HilError, match="garbage"):
        gateway.mesh("garbage")
    target.cleanup()


def test_gateway_driver_unreachable_is_a_clear_error() -> None:
    target = Target("gateway")
    MeshGateway(target, None, url="http://127.0.0.1:9")  # discard port: nothing listens
    gateway = MeshGatewayDriver(target, None, start_s=0.05)
    with pytest.raises(HilTimeout, match=r"127\.0\.0\.1:9 to answer"):
        target.activate(gateway)


def test_namespace_thread_refuses_a_missing_namespace() -> None:
    thread = NamespaceThread("mh-no-such-namespace")
    try:
        with pytest.raises(NamespaceError, match="mh-no-such-namespace"):
            thread.call(int, "1")
    finally:
        thread.close()


# ---------------------------------------------------------------------------- broker and agent


def test_broker_restart_command_failures_say_why() -> None:
    target = Target("gateway")
    MeshBroker(target, None, restart_cmd="sh -c 'echo broker busy >&2; exit 3'")
    broker = MeshBrokerDriver(target, None)
    target.activate(broker)
    with pytest.raises(HilError, match=r"broker restart failed \(exit 3\): broker busy"):
        broker.restart()
    other = Target("gw2")
    MeshBroker(other, None, restart_cmd="true", address="10.0.0.5:1883")
    ok = MeshBrokerDriver(other, None)
    other.activate(ok)
    ok.restart()
    assert ok.restarts == 1 and ok.address == "10.0.0.5:1883"


def test_agent_driver_commands_install_and_start_the_systemd_unit() -> None:
    target = Target("pi-1")
    FakeCommandDriver(target, None)
    FakeFileTransferDriver(target, None)
    agent = MeshAgentDriver(target, None, config_file="agent.toml")
    assert agent.commands_for("install") == [
        "install -D -m 644 /tmp/meshelect-hil/agent.toml /etc/meshelect/agent.toml",
        "install -D -m 644 /tmp/meshelect-hil/meshelect-agent.service "
        "/etc/systemd/system/meshelect-agent.service",
        "systemctl daemon-reload",
        "systemctl enable --now meshelect-agent.service",
    ]
    target2 = Target("pi-2")
    FakeCommandDriver(target2, None)
    FakeFileTransferDriver(target2, None)
    with_sudo = MeshAgentDriver(
        target2, None, config_file="a.toml", sudo=True, install_cmd="pip install meshelect"
    )
    assert with_sudo.commands_for("install")[0] == "sudo pip install meshelect"
    assert with_sudo.commands_for("stop") == ["sudo systemctl stop meshelect-agent.service"]
    with pytest.raises(ValueError, match="unknown action"):
        agent.commands_for("reboot")


def test_manifest_hash_names_the_files_not_their_order() -> None:
    a = {"files": [{"path": "a", "sha256": "1"}, {"path": "b", "sha256": "2"}]}
    b = {"files": [{"path": "b", "sha256": "2"}, {"path": "a", "sha256": "1"}]}
    c = {"files": [{"path": "b", "sha256": "3"}, {"path": "a", "sha256": "1"}]}
    assert manifest_hash(a) == manifest_hash(b) != manifest_hash(c)
