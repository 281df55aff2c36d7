"""The test kit works for real (broker, network-namespace lab, MicroPython), and so do the
suite's CI rules for missing tools."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from testkit.broker import Mosquitto
from testkit.mpy import compile_mpy, run_micropython
from testkit.netns import Lab, run_tag
from testkit.tools import require_tool
from tests.paths import REPO_ROOT

PREFIX = "mi-"  # this suite's namespace prefix and subnet (see the team's allocation)
SUBNET = "10.91.0.0/24"
RUN = "%s%s-" % (PREFIX, run_tag(os.getpid()))  # the names this process's labs get
GROUP = "239.255.77.77"
PORT = 47470
WAIT_S = 10.0  # bound on waiting for an event that normally takes milliseconds

pytest_plugins = ["pytester"]

# ---------------------------------------------------------------------------------- broker


def mqtt_client(broker: Mosquitto, client_id: str):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    return client


def publish_and_receive(
    broker: Mosquitto, topic: str, payload: bytes, retain: bool
) -> bytes | None:
    """Subscribe, publish ``payload`` and return what the subscriber got (None if nothing)."""
    got: list[bytes] = []
    arrived = threading.Event()
    subscribed = threading.Event()

    def on_message(_client: object, _userdata: object, message: Any) -> None:
        got.append(message.payload)
        arrived.set()

    sub = mqtt_client(broker, "mi-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_args: subscribed.set()
    pub = mqtt_client(broker, "mi-pub")
    try:
        sub.subscribe(topic, qos=1)
        assert subscribed.wait(WAIT_S), broker.log()
        pub.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_S)
        arrived.wait(WAIT_S)
        return got[0] if got else None
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


def retained(broker: Mosquitto, topic: str) -> bytes | None:
    """The retained message on ``topic`` as a new subscriber sees it (None if there is none)."""
    sentinel = "meshelect/t/sentinel"
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(_client: object, _userdata: object, message: Any) -> None:
        got[message.topic] = message.payload
        if message.topic == sentinel:
            done.set()

    subscribed = threading.Event()
    client = mqtt_client(broker, "mi-retained")
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    try:
        client.subscribe([(topic, 1), (sentinel, 1)])
        assert subscribed.wait(WAIT_S), broker.log()
        # The broker sends retained messages right after the SUBACK, so they are delivered
        # before this sentinel, which is published afterwards on the same connection.
        client.publish(sentinel, b"end", qos=1)
        assert done.wait(WAIT_S), broker.log()
        return got.get(topic)
    finally:
        client.disconnect()
        client.loop_stop()


def test_broker_pub_sub_with_paho(mosquitto: Mosquitto) -> None:
    assert mosquitto.host == "127.0.0.1"
    assert mosquitto.port != 1883
    assert publish_and_receive(mosquitto, "meshelect/t/x", b"hello", retain=True) == b"hello"
    assert retained(mosquitto, "meshelect/t/x") == b"hello"


def test_broker_restart_keeps_port_and_forgets_state(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    assert publish_and_receive(mosquitto, "meshelect/t/r", b"one", retain=True) == b"one"
    mosquitto.restart()
    assert mosquitto.port == port and mosquitto.running
    # persistence is off: a restarted broker has no retained messages
    assert retained(mosquitto, "meshelect/t/r") is None
    assert publish_and_receive(mosquitto, "meshelect/t/r", b"two", retain=False) == b"two"


def test_broker_stop_and_kill_refuse_connections(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    assert not mosquitto.running
    with pytest.raises(ConnectionRefusedError):
        mqtt_client(mosquitto, "mi-refused")
    mosquitto.start()
    client = mqtt_client(mosquitto, "mi-ok")
    client.disconnect()
    client.loop_stop()
    mosquitto.kill()
    assert not mosquitto.running
    assert "running" in mosquitto.log() or mosquitto.log() == ""


def test_broker_extra_config_and_second_instance(mosquitto_factory) -> None:  # type: ignore[no-untyped-def]
    first = mosquitto_factory()
    second = mosquitto_factory(config="max_keepalive 60")
    assert first.port != second.port
    assert "max_keepalive 60" in second.config_path.read_text()
    assert publish_and_receive(second, "meshelect/t/2", b"x", retain=False) == b"x"


def test_broker_refuses_port_1883() -> None:
    require_tool("mosquitto")
    with pytest.raises(ValueError, match="1883"):
        Mosquitto(port=1883)


# ------------------------------------------------------------------------------- netns lab

RECEIVER = r"""
import select, socket, struct, sys
group, port = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("", port))
mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("ready", flush=True)
counts = {}
stopping = False
while True:
    # Bounded: a stop command ends the run; then drain briefly; never wait more than 10 s.
    ready, _, _ = select.select([sock] + ([] if stopping else [sys.stdin]), [], [],
                                0.2 if stopping else 10)
    if not ready:
        break
    if sys.stdin in ready:
        sys.stdin.readline()
        stopping = True
        continue
    data, addr = sock.recvfrom(2048)
    counts[addr[0]] = counts.get(addr[0], 0) + 1
for source in sorted(counts):
    print("from %s %d" % (source, counts[source]), flush=True)
"""

SENDER = r"""
import socket, sys, time
dest, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for i in range(count):
    sock.sendto(b"%d" % i, (dest, port))
    time.sleep(0.001)
"""


def received(
    lab: Lab, receiver: int, senders: Iterable[int], count: int, dest: str = GROUP
) -> dict[int, int]:
    """Each sender sends ``count`` datagrams to ``dest``; return how many ``receiver`` got
    from each sender."""
    proc = lab.run(
        receiver,
        [sys.executable, "-c", RECEIVER, GROUP, str(PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    senders = list(senders)
    for sender in senders:
        result = lab.exec(sender, [sys.executable, "-c", SENDER, dest, str(PORT), str(count)])
        assert result.returncode == 0, result.stderr
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=WAIT_S)
    counts = dict.fromkeys(senders, 0)
    by_address = {lab.address(sender): sender for sender in senders}
    for line in out.splitlines():
        _, address, n = line.split()
        counts[by_address[address]] = int(n)
    return counts


@pytest.mark.netns
def test_lab_multicast_and_unicast_between_namespaces() -> None:
    with Lab(PREFIX, SUBNET, hosts=2) as lab:
        assert lab.address(1) == "10.91.0.1" and lab.ns(2) == RUN + "h2"
        assert received(lab, 1, [2], 20) == {2: 20}
        assert received(lab, 1, [2], 20, dest=lab.address(1)) == {2: 20}


@pytest.mark.netns
def test_lab_partition_drops_and_heal_restores() -> None:
    with Lab(PREFIX, SUBNET, hosts=3) as lab:
        lab.partition([[1, 2], [3]])
        assert received(lab, 1, [2, 3], 20) == {2: 20, 3: 0}
        assert received(lab, 3, [1, 2], 20) == {1: 0, 2: 0}
        lab.heal()
        assert received(lab, 1, [2, 3], 20) == {2: 20, 3: 20}


@pytest.mark.netns
def test_lab_loss_drops_a_share_of_frames() -> None:
    with Lab(PREFIX, SUBNET, hosts=2) as lab:
        lab.loss(2, 100)
        assert received(lab, 1, [2], 20) == {2: 0}
        lab.loss(2, 50)
        got = received(lab, 1, [2], 200)[2]
        assert 50 <= got <= 150, got  # binomial(200, 0.5): outside this range ~1e-12
        lab.loss(2, 0)
        assert received(lab, 1, [2], 20) == {2: 20}
        assert "numgen" not in lab.ruleset()


MQTT_ROUND_TRIP = r"""
import sys, threading
import paho.mqtt.client as mqtt
host, port = sys.argv[1], int(sys.argv[2])
got = threading.Event()
subscribed = threading.Event()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mi-ns-client")
client.on_message = lambda *_args: got.set()
client.on_subscribe = lambda *_args: subscribed.set()
client.connect(host, port)
client.loop_start()
client.subscribe("meshelect/t/ns", qos=1)
assert subscribed.wait(10)
client.publish("meshelect/t/ns", b"x", qos=1)
print("ok" if got.wait(10) else "nothing")
client.disconnect()
client.loop_stop()
"""


@pytest.mark.netns
@pytest.mark.broker
def test_broker_inside_a_lab_host_serves_another_host() -> None:
    with Lab(PREFIX, SUBNET, hosts=2) as lab:
        broker = Mosquitto(host=lab.address(1), netns=lab.ns(1))
        try:
            broker.start()
            result = lab.exec(
                2, [sys.executable, "-c", MQTT_ROUND_TRIP, broker.host, str(broker.port)]
            )
            assert result.stdout.strip() == "ok", result.stderr + broker.log()
        finally:
            broker.close()


def namespaces(prefix: str = RUN) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return sorted(line.split()[0] for line in listed.stdout.splitlines() if line.startswith(prefix))


@pytest.mark.netns
def test_lab_teardown_kills_processes_and_deletes_namespaces() -> None:
    with Lab(PREFIX, SUBNET, hosts=2) as lab:
        tracked = lab.run(1, ["sleep", "600"])
        # started behind the lab's back, still inside its namespace: killed as well
        untracked = subprocess.Popen(lab.command(2, ["sleep", "600"]))
        assert namespaces() == [RUN + "br", RUN + "h1", RUN + "h2"]
    assert tracked.poll() is not None
    assert untracked.wait(WAIT_S) is not None
    assert namespaces() == []


@pytest.mark.netns
def test_lab_cleans_up_on_exception_and_removes_stale_namespaces() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is gone: its lab was left by a crash
    crashed = "%s%s-h9" % (PREFIX, run_tag(dead.pid))
    live = "%s%s-h9" % (PREFIX, run_tag(1))  # pid 1 is alive: that lab is somebody else's
    subprocess.run(["ip", "netns", "add", crashed], check=True)
    subprocess.run(["ip", "netns", "add", live], check=True)
    inside: list[str] = []

    def crash_inside_a_lab() -> None:
        with Lab(PREFIX, SUBNET, hosts=1):
            inside.extend(namespaces(PREFIX))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crash_inside_a_lab()
    try:
        # the crashed run's h9 was removed first; the live run's was left alone
        assert sorted(inside) == sorted([RUN + "br", RUN + "h1", live])
    finally:
        subprocess.run(["ip", "netns", "del", live], check=False)
    assert namespaces() == []


def test_lab_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/8"):
        Lab(PREFIX, "192.168.5.0/24")
    with pytest.raises(ValueError, match="prefix"):
        Lab("Bad Prefix", SUBNET)
    lab = Lab(PREFIX, SUBNET, hosts=3)
    with pytest.raises(ValueError, match="two groups"):
        lab.partition([[1, 2], [2, 3]])
    with pytest.raises(ValueError, match="no host"):
        lab.address(4)
    lab._groups = [[1, 2], [3]]  # ruleset() is pure: check the rules without root
    rules = lab.ruleset()
    assert 'iifname "p1" oifname "p3" drop' in rules
    assert 'iifname "p1" oifname "p2" drop' not in rules


# ----------------------------------------------------------------------------- MicroPython


@pytest.mark.micropython
def test_micropython_runs_code_module_and_script(tmp_path: Path) -> None:
    rc, out = run_micropython(code="import sys; print(sys.implementation.name)")
    assert (rc, out.strip()) == (0, "micropython")
    # the checkout root is on MICROPYPATH, and frozen modules (asyncio) stay importable
    rc, out = run_micropython(code="import agent.core._compat, asyncio; print('ok')")
    assert (rc, out.strip()) == (0, "ok"), out
    (tmp_path / "mi_probe.py").write_text(
        "import sys\ndef main():\n    print('args', sys.argv[1:])\nif __name__ == '__main__':\n    main()\n"
    )
    rc, out = run_micropython(module="mi_probe", path=[tmp_path])
    assert (rc, out.strip()) == (0, "args []"), out
    rc, out = run_micropython(tmp_path / "mi_probe.py", "a", "b")
    assert (rc, out.strip()) == (0, "args ['a', 'b']"), out


@pytest.mark.micropython
def test_micropython_errors_and_heap_limit() -> None:
    rc, out = run_micropython(code="raise ValueError('bad')")
    assert rc == 1 and "ValueError: bad" in out  # tracebacks arrive on stdout
    rc, out = run_micropython(code="b = bytearray(200000)", heapsize="64K")
    assert rc == 1 and "MemoryError" in out, out


@pytest.mark.micropython
def test_mpy_cross_output_imports_on_micropython(tmp_path: Path) -> None:
    source = tmp_path / "src" / "mi_compiled.py"
    source.parent.mkdir()
    source.write_text("def answer():\n    return 6 * 7\n")
    build = tmp_path / "build"
    build.mkdir()
    rc, out = compile_mpy(source, build / "mi_compiled.mpy")
    assert rc == 0, out
    rc, out = run_micropython(code="import mi_compiled; print(mi_compiled.answer())", path=[build])
    assert (rc, out.strip()) == (0, "42"), out  # same .mpy version on both tools


def test_run_micropython_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        run_micropython(code="1", module="x")


# -------------------------------------------------------------------------------- CI rules

CONFTEST = "from tests.conftest import *  # noqa: F403\n"
INI = """[pytest]
markers =
    hardware: real boards
"""
# Inner sessions need none of the heavy plugins; leaving them out keeps these tests fast.
# labgrid's plugin (installed with the hil extra) starts a process-wide step logger once per
# process: a second, in-process pytest session would trip over it.
INNER_ARGS = (
    "-p", "no:hypothesispytest", "-p", "no:asyncio", "-p", "no:anyio", "-p", "no:labgrid",
)  # fmt: skip

SKIPPING = """
import pytest
from testkit.tools import require_tool

def test_needs_a_module():
    pytest.importorskip("mi_no_such_module")

def test_needs_a_tool():
    require_tool("mi-no-such-tool")

@pytest.mark.hardware
def test_on_real_boards():
    pass

@pytest.mark.skip(reason="documented as not applicable")
def test_deliberately_skipped():
    pass
"""
MODULE_SKIP = "import pytest\npytest.importorskip('mi_no_such_module')\n"


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A separate pytest session that uses this suite's conftest."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


def test_missing_tools_skip_locally(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    inner.makepyfile(test_inner=SKIPPING, test_module_skip=MODULE_SKIP)
    inner.runpytest(*INNER_ARGS).assert_outcomes(skipped=5)


def test_missing_tools_fail_in_ci(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    inner.makepyfile(test_inner=SKIPPING, test_module_skip=MODULE_SKIP)
    result = inner.runpytest(*INNER_ARGS, "--continue-on-collection-errors")
    # importorskip and require_tool fail, so does the module-level importorskip (at
    # collection); the hardware test and a deliberate skip stay skipped.
    result.assert_outcomes(failed=2, skipped=2, errors=1)
    result.stdout.fnmatch_lines(["*CI=true*mi_no_such_module*"])
    result.stdout.fnmatch_lines(["*missing tool: mi-no-such-tool*"])


def test_no_tests_is_a_failure_in_ci(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    assert inner.runpytest(*INNER_ARGS).ret == pytest.ExitCode.TESTS_FAILED
