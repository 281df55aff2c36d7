"""The firmware runtime as processes (MicroPython unix port, built .mpy) in two network
namespaces: a graceful stop (SIGINT) of the leader hands over to a named successor with no
leaderless moment, and the successor records why it leads; a node with no gateway address
says once that none is found, once that mDNS found one, and once that it stopped."""

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

from testkit.gateway import GatewayProcess
from testkit.netns import Lab
from testkit.tools import require_tool
from testkit.waiting import poll_until
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.netns, pytest.mark.micropython]

WAIT_S = 20.0


wait_for = functools.partial(poll_until, timeout=WAIT_S)


def build_firmware(tmp_path: Path) -> Path:
    require_tool("micropython")
    require_tool("mpy-cross")
    build = tmp_path / "build"
    firmware_tool.build(build)
    return build


def start_firmware(
    lab: Lab, host: int, build: Path, folder: Path, settings: dict[str, Any]
) -> subprocess.Popen[Any]:
    """The built firmware on the unix port in ``host``, from ``folder`` (its config there,
    its output in ``out.log``), with the status file and no status lines on stdout."""
    folder.mkdir()
    for entry in build.iterdir():
        os.symlink(entry, folder / entry.name)
    config = firmware_tool.device_config(
        {
            "status_ms": 100,
            "print_status": False,
            "status_file": str(folder / "status.json"),
            "udp": {"interface": lab.address(host)},
            "hw": {"kind": "unix", "battery": 900},
            **settings,
        }
    )
    (folder / "config.json").write_text(json.dumps(config))
    with (folder / "out.log").open("w") as out:
        return lab.run(
            host,
            ["env", "MICROPYPATH=.frozen:.", require_tool("micropython"), "main.py"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )


def test_graceful_stop_hands_over_without_a_leaderless_moment(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = lab_factory(prefix="mf-", subnet="10.94.0.0/24", hosts=2)
    build = build_firmware(tmp_path)
    procs = {}
    logs = {}
    for host, (name, battery) in ((1, ("fw-a", 900)), (2, ("fw-b", 600))):
        procs[name] = start_firmware(
            lab,
            host,
            build,
            tmp_path / name,
            {
                "node_id": name,
                "mesh": "handoff",
                "mesh_key": "00112233",
                "discovery": {"enabled": False},
                "hw": {"kind": "unix", "battery": battery},
            },
        )
        logs[name] = tmp_path / name / "out.log"

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


def test_the_gateway_is_told_once_not_found_then_found_then_lost(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    """No gateway address: one line when none is found after the grace, one when mDNS finds
    the real gateway started later, one when its goodbye says it stopped (not a line a tick)."""
    lab = lab_factory(prefix="mg-", subnet="10.90.0.0/24", hosts=2)
    build = build_firmware(tmp_path)
    start_firmware(
        lab, 1, build, tmp_path / "fw", {"node_id": "fw-a", "mesh": "gwlines", "mesh_key": "0011"}
    )
    log = tmp_path / "fw" / "out.log"

    def lines() -> list[str]:
        return [line for line in log.read_text().splitlines() if line.startswith("gateway ")]

    assert wait_for(lambda: "gateway none (mdns: not found yet)" in lines()), log.read_text()
    gateway = GatewayProcess(
        str(tmp_path / "gw.db"),
        "--mdns-interface", lab.address(2),
        udp_port=47471, host=lab.address(2), wrap=lab.command(2, []), mdns=True,
    )  # fmt: skip
    gateway.start()
    try:
        found = "gateway %s:47471 (mdns)" % lab.address(2)
        assert wait_for(lambda: found in lines()), log.read_text()
    finally:
        gateway.stop()  # a clean stop says goodbye on mDNS
    assert wait_for(lambda: "gateway lost (mdns)" in lines()), log.read_text()
    assert lines() == ["gateway none (mdns: not found yet)", found, "gateway lost (mdns)"]
