"""`meshelect demo` end to end: a real gateway and real agent processes on loopback; the
gateway's API shows a mesh with a leader, and everything is cleaned up afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def test_demo_runs_a_mesh_with_a_leader_and_cleans_up() -> None:
    pytest.importorskip("starlette", reason="the gateway's web stack is not installed")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.demo",
            "--agents",
            "3",
            "--http-port",
            "0",
            "--mesh",
            "t-demo",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = folder = None
        while url is None or folder is None:
            line = proc.stdout.readline()
            assert line, "demo exited early:\n" + "".join(lines)
            lines.append(line)
            if m := re.search(r"dashboard (http://\S+)", line):
                url = m.group(1)
            if m := re.search(r"logs and state in (\S+);", line):
                folder = m.group(1)
        leader = None
        deadline = time.monotonic() + 20
        while leader is None and time.monotonic() < deadline:
            try:
                meshes = _get(url + "api/meshes")
            except OSError:
                meshes = []
            for mesh in meshes:
                if (
                    mesh.get("name") == "t-demo"
                    and mesh.get("leader")
                    and len(mesh.get("members", [])) == 3
                ):
                    leader = mesh["leader"]
            time.sleep(0.3)
        assert leader == "node-1"  # the fullest battery leads first
        readings = _get(url + "api/meshes/t-demo/readings")
        assert {r["node"] for r in readings} >= {"node-1"}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopping" in out
    assert not Path(folder).exists()
