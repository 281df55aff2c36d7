"""`meshelect demo` end to end, with real processes: a gateway and agents on loopback.

The demo shows a mesh with a leader; it survives the death of any of its processes (a node is
started again, the gateway too, on the same port); it can be broken on purpose through its
control socket, the gateway's demo API and its terminal keys, and each action shows in the
gateway's election list with its reason; and however it ends, no child outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.waiting import poll_until
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, header: bool = True) -> tuple[int, Any]:
    headers = {"X-Meshelect-Demo": "1"} if header else {}
    request = urllib.request.Request(url, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def processes_under(folder: str) -> list[int]:
    """Pids of the processes whose command line names ``folder``: the demo's children (their
    configs, database and control socket live there; the demo's own command line does not)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if folder.encode() in cmdline:
            found.append(int(entry))
    return found


class DemoRun:
    """``python -m agent.demo`` as a child process, its output collected as it comes."""

    def __init__(
        self, mesh: str, *extra: str, prefix: list[str] | None = None, follow: bool = True
    ) -> None:
        self.mesh = mesh
        argv = [*(prefix or [sys.executable, "-m", "agent.demo"]),
                "--http-port", "0", "--mesh", mesh, *extra]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(
            target=self._pump, args=(self.proc.stderr, self.errors), daemon=True
        ).start()
        self.url = self.folder = ""
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := re.search(r"dashboard (http://\S+)", line):
                self.url = m.group(1)
            if m := re.search(r"logs and state in (\S+);", line):
                self.folder = m.group(1)
                break
        assert self.url and self.folder, "the demo did not start:\n" + self.output()
        if follow:  # else the test may close its end of the pipe (a reader would block that)
            reader = threading.Thread(
                target=self._pump, args=(self.proc.stdout, self.lines), daemon=True
            )
            reader.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        try:
            for line in stream:
                into.append(line)
        except (OSError, ValueError):
            pass  # the test closed its end on purpose

    def output(self) -> str:
        return "".join(self.lines) + "".join(self.errors)

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found.extend(m for line in list(self.lines) if (m := re.search(pattern, line)))
            return bool(found)

        assert poll_until(seen, timeout), "no line %r in:\n%s" % (pattern, self.output())
        return found[0]

    def status(self, node: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.folder, node, "status.json")) as f:
                return dict(json.load(f))
        except (OSError, ValueError):
            return {}

    def settled(self, n: int, since: float = 0.0) -> bool:
        """All n agents run, rewrote their status after ``since`` (seconds), hear each other
        and agree on one leader that is alive: the mesh as the demo, which reads the same
        files, sees it."""
        statuses = [self.status("node-%d" % i) for i in range(1, n + 1)]
        leader = statuses[0].get("leader")
        if leader is None or not all(
            s.get("updated", 0) > max(since, time.time() - 3)
            and s.get("leader") == leader
            and sum(p["age_ms"] < 2000 for p in s.get("peers", [])) == n - 1
            for s in statuses
        ):
            return False
        mine = self.status(str(leader))
        try:
            os.kill(mine.get("pid", 0) or 0, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return mine.get("role") == "leader"

    def leaders(self, n: int) -> set[str]:
        return {str(self.status("node-%d" % i).get("leader")) for i in range(1, n + 1)}

    def mesh_state(self) -> dict[str, Any]:
        try:
            meshes = _get(self.url + "api/meshes")
        except OSError:
            return {}
        return next((m for m in meshes if m["name"] == self.mesh), {})

    def wait_leader(self, members: int, timeout: float = 30) -> str:
        def settled() -> bool:
            mesh = self.mesh_state()
            live = [
                m
                for m in mesh.get("members", [])
                if m.get("last_seen_ms", 0) > time.time() * 1000 - 3000
            ]
            return bool(mesh.get("leader")) and len(live) >= members

        assert poll_until(settled, timeout, step=0.3), self.output()
        return str(self.mesh_state()["leader"])

    def elections_after(self, at_ms: int) -> list[dict[str, Any]]:
        rows = _get(self.url + "api/elections?mesh=%s" % self.mesh)
        return sorted((e for e in rows if e["at_ms"] >= at_ms), key=lambda e: e["term"])

    def end(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in processes_under(self.folder) if self.folder else []:
            with_suppress_kill(pid)
        if self.folder and os.path.isdir(self.folder):
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)


def with_suppress_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


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
    readings = _get(demo.url + "api/meshes/t-demo/readings")
    assert {r["node"] for r in readings} >= {"node-1"}
    assert len(processes_under(demo.folder)) == 4  # the gateway and three agents
    folder = demo.folder
    assert demo.end(signal.SIGINT) == 0, demo.output()
    assert "stopping (SIGINT)" in demo.output()
    assert not Path(folder).exists()
    assert processes_under(folder) == []


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
        answer[:] = [_post(demo.url + "api/demo/" + action)]
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
    info = _get(demo.url + "api/demo")
    assert set(info["actions"]) == {"kill", "stop", "drain", "partition", "heal"}
    assert poll_until(lambda: _get(demo.url + "api/demo")["connected"], 10, 0.3)
    assert _post(demo.url + "api/demo/kill", header=False)[0] == 403
    assert _post(demo.url + "api/demo/heal") == (
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
            for a in _get(demo.url + "api/alerts?mesh=t-break")
        ),
        20,
        0.3,
    )
    assert _get(demo.url + "api/demo")["partitioned"] is True
    status, reply = _post(demo.url + "api/demo/heal")
    assert status == 200
    _wait_election(demo, reply["event"]["at_ms"], "partition merge")
    recent = [e["action"] for e in _get(demo.url + "api/demo")["recent"]]
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
        with_suppress_kill(pid)
        for child in processes_under(folder) if folder else []:
            with_suppress_kill(child)
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
