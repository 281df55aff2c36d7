"""`meshelect demo` end to end, with real processes: a gateway and agents on loopback.

The demo shows a mesh with a leader; it survives the death of any of its processes (a node is
started again, the gateway too, on the same port); it can be broken on purpose through its
control socket, the gateway's demo API and its terminal keys, and each action shows in the
gateway's election list with its reason; and however it ends, no child outlives it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.demo import DemoRun, get_json, kill_quietly, post_json, processes_under
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_factory() -> Iterator[Callable[..., DemoRun]]:
    pytest.importorskip("starlette", reason="the gateway's web stack is not installed")
    runs: list[DemoRun] = []

    def start(mesh: str, *extra: str, **kwargs: Any) -> DemoRun:
        run = DemoRun(mesh, *extra, **kwargs)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


def test_demo_runs_a_mesh_with_a_leader_and_cleans_up(demo_factory: Callable[..., DemoRun]) -> None:
    demo = demo_factory("t-demo", "--agents", "3")
    assert demo.wait_leader(3) == "node-1"  # the fullest battery leads first
    readings = get_json(demo.url + "api/meshes/t-demo/readings")
    assert {r["node"] for r in readings} >= {"node-1"}
    assert len(processes_under(demo.folder)) == 4  # the gateway and three agents
    folder = demo.folder
    assert demo.end(signal.SIGINT) == 0, demo.output()
    assert "stopping (SIGINT)" in demo.output()
    assert not Path(folder).exists()
    assert processes_under(folder) == []


def test_the_demo_over_mqtt(demo_factory: Callable[..., DemoRun], mosquitto: Any) -> None:
    """Over a real broker the mesh forms as on UDP; the demo keeps its mesh out of Home
    Assistant unless asked (retained entities would outlive it)."""
    demo = demo_factory(
        "t-mqtt", "--agents", "3", "--mqtt", "%s:%d" % (mosquitto.host, mosquitto.port)
    )
    assert demo.wait_leader(3) == "node-1"
    gateway = next(
        p
        for p in processes_under(demo.folder)
        if b"gateway" in Path("/proc/%d/cmdline" % p).read_bytes()
    )
    assert b"--no-homeassistant" in Path("/proc/%d/cmdline" % gateway).read_bytes()
    assert demo.end() == 0, demo.output()


def test_the_demo_survives_the_death_of_its_leader_and_of_its_gateway(
    demo_factory: Callable[..., DemoRun],
) -> None:
    demo = demo_factory("t-survive", "--agents", "3", "--restart-after", "2")
    assert demo.wait_leader(3) == "node-1"
    pid = demo.status("node-1")["pid"]
    os.kill(pid, signal.SIGKILL)  # as a user would: kill -9 of the leader's agent
    demo.wait_line(r"node-1 exited \(killed by SIGKILL\); starting it again in 2 s")
    assert poll_until(lambda: demo.mesh_state().get("leader") not in (None, "node-1"), 20, 0.3)
    demo.wait_line(r"node-1 started again \(pid \d+\)")
    assert poll_until(lambda: demo.status("node-1").get("pid") not in (None, pid), 20)
    assert demo.proc.poll() is None and Path(demo.folder, "node-1.log").exists()

    url = demo.url
    gateway = next(
        p
        for p in processes_under(demo.folder)
        if b"gateway" in Path("/proc/%d/cmdline" % p).read_bytes()
    )
    os.kill(gateway, signal.SIGKILL)
    demo.wait_line(r"gateway exited \(killed by SIGKILL\)")
    demo.wait_line(r"gateway started again")
    # Back on the same port, with the agents' batches flowing in again.
    assert poll_until(lambda: bool(demo.mesh_state().get("leader")), 30, 0.3), demo.output()
    assert demo.url == url
    assert demo.end(signal.SIGTERM) == 0, demo.output()


def _wait_election(
    demo: DemoRun, since_ms: int, reason: str, timeout: float = 20
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in demo.elections_after(since_ms) if e["reason"] == reason]
        return bool(found)

    assert poll_until(seen, timeout, step=0.3), "no %r election after %d: %s\n%s" % (
        reason, since_ms, demo.elections_after(since_ms - 60_000), demo.output())  # fmt: skip
    return found[0]


def _act(demo: DemoRun, action: str) -> tuple[int, Any]:
    """POST the action; while an election is under way the demo answers 409 "no leader right
    now", as it would to a user: ask again."""
    answer: list[tuple[int, Any]] = []

    def done() -> bool:
        answer[:] = [post_json(demo.url + "api/demo/" + action)]
        return not (answer[0][0] == 409 and "no leader" in answer[0][1]["error"])

    poll_until(done, 10, step=0.5)
    return answer[0]


def test_breaking_the_demo_on_purpose_shows_each_reason(
    demo_factory: Callable[..., DemoRun],
) -> None:
    """Every action through the gateway's demo API (the dashboard's buttons): the action is
    answered, listed as an operator event, and followed by an election with its reason."""
    demo = demo_factory("t-break", "--agents", "4", "--restart-after", "2")
    demo.wait_leader(4)
    info = get_json(demo.url + "api/demo")
    assert set(info["actions"]) == {"kill", "stop", "drain", "partition", "heal"}
    assert poll_until(lambda: get_json(demo.url + "api/demo")["connected"], 10, 0.3)
    assert post_json(demo.url + "api/demo/kill", header=False)[0] == 403
    assert post_json(demo.url + "api/demo/heal") == (
        409,
        {"error": "the mesh is not partitioned", "status": 409},
    )

    since = 0.0
    for action, reason in (("kill", "crash"), ("stop", "handoff"), ("drain", "low battery")):
        assert poll_until(lambda s=since: demo.settled(4, s), 30, 0.2), demo.output()
        status, reply = _act(demo, action)
        assert status == 200, (action, reply)
        event = reply["event"]
        assert (event["action"], event["source"]) == (action, "dashboard")
        assert event["node"] in ("node-1", "node-2", "node-3", "node-4")
        election = _wait_election(demo, event["at_ms"], reason)
        assert election["leader"] != event["node"]
        demo.wait_line(re.escape(event["text"]))
        since = election["at_ms"] / 1000

    assert poll_until(lambda: demo.settled(4, since), 30, 0.2), demo.output()
    status, reply = _act(demo, "partition")
    assert status == 200, reply
    assert reply["event"]["text"] == "partition: {node-1, node-2} | {node-3, node-4}"
    # Each half leads itself, and the gateway sees two leaders at once.
    assert poll_until(lambda: len(demo.leaders(4)) == 2, 20, 0.2), demo.leaders(4)
    since = reply["event"]["at_ms"]
    assert poll_until(
        lambda: any(
            a["kind"] == "two_leaders" and a["raised_ms"] >= since
            for a in get_json(demo.url + "api/alerts?mesh=t-break")
        ),
        20,
        0.3,
    )
    assert get_json(demo.url + "api/demo")["partitioned"] is True
    status, reply = post_json(demo.url + "api/demo/heal")
    assert status == 200
    # Healed: one leader again, the better one (a "partition merge" election when it has to
    # claim a term above both; none when it holds the higher term already), and the gateway's
    # two-leaders alert clears.
    healed = reply["event"]["at_ms"] / 1000
    assert poll_until(lambda: demo.settled(4, healed), 30, 0.2), demo.output()
    assert poll_until(
        lambda: (
            not any(a["kind"] == "two_leaders" for a in get_json(demo.url + "api/alerts?active=1"))
        ),
        20,
        0.3,
    )
    recent = [e["action"] for e in get_json(demo.url + "api/demo")["recent"]]
    assert recent == ["kill", "stop", "drain", "partition", "heal"]
    assert demo.end() == 0, demo.output()


def test_keys_in_the_terminal(tmp_path: Path) -> None:
    """In a terminal (a pty) the demo takes single keys; h prints the help, k kills the leader."""
    pytest.importorskip("starlette", reason="the gateway's web stack is not installed")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo in the pty's foreground
        os.chdir(REPO_ROOT)
        os.environ["PYTHONPATH"] = str(REPO_ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "agent.demo", "--http-port", "0",
                                  "--mesh", "t-keys", "--agents", "2"])  # fmt: skip
    seen = bytearray()

    def read_until(pattern: bytes, timeout: float) -> re.Match[bytes] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, bytes(seen)):
                return m
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen.extend(os.read(fd, 4096))
                except OSError:
                    break
        return re.search(pattern, bytes(seen))

    folder = ""
    try:
        m = read_until(rb"logs and state in (\S+);", 30)
        assert m, seen.decode(errors="replace")
        folder = m.group(1).decode()
        assert read_until(rb"keys: k kill -9 the leader", 5)
        os.write(fd, b"h")
        assert read_until(rb"(?s)keys: k kill.*keys: k kill", 5)
        assert poll_until(lambda: _leader_in(folder) is not None, 30)
        os.write(fd, b"k")
        assert read_until(rb"kill -9 node-\d \(the leader, pid \d+\)", 10), seen.decode(
            errors="replace"
        )
        os.write(fd, b"p")
        assert read_until(rb"partition: \{node-1\} \| \{node-2\}", 10), seen.decode(
            errors="replace"
        )
        os.kill(pid, signal.SIGINT)
        assert read_until(rb"stopping \(SIGINT\)", 10)
        _, code = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(code) == 0
        assert processes_under(folder) == []
    finally:
        kill_quietly(pid)
        for child in processes_under(folder) if folder else []:
            kill_quietly(child)
        os.close(fd)


def _leader_in(folder: str) -> str | None:
    for node in ("node-1", "node-2"):
        try:
            with open(os.path.join(folder, node, "status.json")) as f:
                if json.load(f).get("role") == "leader":
                    return node
        except (OSError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------- no orphans

BOOM = (
    "import sys, agent.demo as d\n"
    "def boom(self):\n"
    "    raise RuntimeError('boom: a bug after the children started')\n"
    "d.Control.keys = boom\n"
    "sys.exit(d.cli(sys.argv[1:]))\n"
)


@pytest.mark.parametrize(
    ("way", "code"),
    [
        ("SIGINT", 0),
        ("SIGTERM", 0),
        ("SIGHUP", 0),
        ("stdout closed, then SIGTERM", 0),
        ("kill -9 of the demo", -9),
        ("an exception", 1),
    ],
)
def test_no_child_outlives_the_demo(
    demo_factory: Callable[..., DemoRun], way: str, code: int
) -> None:
    extra = ["--agents", "2"]
    prefix = None
    if way == "an exception":
        prefix = [sys.executable, "-c", BOOM]
    demo = demo_factory(
        "t-orphans", *extra, prefix=prefix, follow=way != "stdout closed, then SIGTERM"
    )
    folder = demo.folder
    if way == "an exception":
        assert demo.proc.wait(30) == code
        assert "boom: a bug after the children started" in demo.output()
    else:
        assert poll_until(lambda: len(processes_under(folder)) == 3, 20)
        if way == "stdout closed, then SIGTERM":
            assert demo.proc.stdout is not None
            demo.proc.stdout.close()
            demo.proc.send_signal(signal.SIGTERM)
        elif way == "kill -9 of the demo":
            demo.proc.kill()
        else:
            demo.proc.send_signal(getattr(signal, way))
        assert demo.proc.wait(30) == code, demo.output()
    # Every child ends too (after a kill -9, through the parent-death signal).
    assert poll_until(lambda: processes_under(folder) == [], 20), processes_under(folder)
    if code == 0 or way == "an exception":
        assert not Path(folder).exists(), "the demo removes its folder when it stops"
