"""`meshelect demo` as a child process, for tests: its output, its files, its API, its children.

:class:`DemoRun` starts ``python -m agent.demo`` on a free dashboard port, reads the dashboard's
URL and the demo's folder from its first lines, and keeps collecting its output. It reads what
the demo's nodes write (status files) and what its gateway says (the HTTP API), and finds the
demo's children by their command lines (they all name the demo's folder), so a test can check
that none outlives it. ``cleanup()`` ends whatever is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from testkit.tools import SOURCE_ROOT, python_env
from testkit.waiting import poll_until


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post_json(url: str, header: bool = True) -> tuple[int, Any]:
    """POST with the demo header (or without it); (status, JSON body), errors included."""
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
            cwd=SOURCE_ROOT,
            env=python_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None  # PIPE above
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
        if not (self.url and self.folder):
            self.cleanup()
            raise RuntimeError("the demo did not start:\n" + self.output())
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

        if not poll_until(seen, timeout):
            raise TimeoutError("no line %r in:\n%s" % (pattern, self.output()))
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
            meshes = get_json(self.url + "api/meshes")
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

        if not poll_until(settled, timeout, step=0.3):
            raise TimeoutError("no leader with %d members:\n%s" % (members, self.output()))
        return str(self.mesh_state()["leader"])

    def elections_after(self, at_ms: int) -> list[dict[str, Any]]:
        rows = get_json(self.url + "api/elections?mesh=%s" % self.mesh)
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
            kill_quietly(pid)
        if self.folder and os.path.isdir(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)


def kill_quietly(pid: int) -> None:
    """SIGKILL ``pid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
