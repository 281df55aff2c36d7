"""The firmware runtime as processes (MicroPython unix port, built .mpy) in two network
namespaces: a graceful stop (SIGINT) of the leader hands over to a named successor with no
leaderless moment, and the successor records why it leads. The nodes' clocks start at 12.4 days
of uptime less 3 s (2**30 ms, where an ESP32's small ints end): the runtime keeps its clock
below that by setting it back (3.1 days at a time, NodeApp.rebase), here 3 s into the
election. A node with no gateway address says once that none is found, once that mDNS found
one, and once that it stopped."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.gateway import GatewayProcess
from testkit.mpy import install_firmware
from testkit.netns import Lab
from testkit.tools import require_tool
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.netns, pytest.mark.micropython]

WAIT_S = 20.0
# 2**30 ms less 3 s: the runtime's clock goes back (2**29 less 2 * 2**28 at start, the same
# once more 3 s later) while the nodes elect.
NEAR_WRAP_MS = (1 << 30) - 3000


wait_for = functools.partial(poll_until, timeout=WAIT_S)


def start_two_nodes(
    lab: Lab,
    tmp_path: Path,
    exe: str,
    extra: dict[str, Any],
    start_ms: int = 0,
    frozen: bool = False,
) -> tuple[dict[str, subprocess.Popen[Any]], dict[str, Path]]:
    """fw-a (battery 900) on host 1 and fw-b (600) on host 2, each in a folder of its own
    (``frozen``: the 32-bit stand-in runs its frozen modules, as a board image does)."""
    build = tmp_path / "build"
    firmware_tool.build(build)
    procs = {}
    logs = {}
    for host, (name, battery) in ((1, ("fw-a", 900)), (2, ("fw-b", 600))):
        folder = tmp_path / name
        install_firmware(build, folder, frozen)
        settings = {
            "node_id": name,
            "mesh": "handoff",
            "mesh_key": "00112233",
            "status_ms": 100,
            "print_status": False,
            "status_file": str(folder / "status.json"),
            "udp": {"interface": lab.address(host)},
            "hw": {"kind": "unix", "battery": battery, "clock_ms": start_ms},
        }
        (folder / "config.json").write_text(
            json.dumps(firmware_tool.device_config(settings | extra))
        )
        logs[name] = folder / "out.log"
        with logs[name].open("w") as out:
            procs[name] = lab.run(
                host,
                ["env", "MICROPYPATH=.frozen:.", exe, "main.py"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
    return procs, logs


def dump_logs(logs: dict[str, Path]) -> str:
    return "\n".join("--- %s\n%s" % (n, p.read_text()) for n, p in sorted(logs.items()))


def read_status(tmp_path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((tmp_path / name / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def test_graceful_stop_hands_over_without_a_leaderless_moment(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    exe = mpy_exe
    require_tool("mpy-cross")
    start_ms = NEAR_WRAP_MS
    lab = lab_factory(prefix="mf-", subnet="10.94.0.0/24", hosts=2)
    procs, logs = start_two_nodes(
        lab, tmp_path, exe, {"discovery": {"enabled": False}}, start_ms, mpy_bits == 32
    )
    status = functools.partial(read_status, tmp_path)
    dump = functools.partial(dump_logs, logs)

    assert wait_for(
        lambda: status("fw-a").get("role") == "leader" and status("fw-b").get("leader") == "fw-a"
    ), dump()
    # Past 12.4 days of uptime: the clocks went back once more, with the mesh going on.
    for name in ("fw-a", "fw-b"):
        assert wait_for(lambda name=name: status(name).get("clock_rebases", 0) == 1), dump()
        assert status(name)["clock_ms"] < 1 << 29
    assert status("fw-b").get("leader") == "fw-a", dump()
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


def test_energy_reports_go_on_after_the_clock_goes_back(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    """The run loop's energy deadline goes back with the clock, as every held time does:
    without it, past the rebase the next report would be 3.1 days away. Samples are an hour
    apart here, so the readings a node takes after the rebase are its energy reports."""
    require_tool("mpy-cross")
    lab = lab_factory(prefix="me-", subnet="10.94.1.0/24", hosts=2)
    extra = {
        "discovery": {"enabled": False},
        "energy": {"report_ms": 200},
        "data": {"sample_ms": 3600000},
    }
    _, logs = start_two_nodes(lab, tmp_path, mpy_exe, extra, NEAR_WRAP_MS, mpy_bits == 32)
    status = functools.partial(read_status, tmp_path)
    dump = functools.partial(dump_logs, logs)
    for name in ("fw-a", "fw-b"):
        assert wait_for(lambda name=name: status(name).get("clock_rebases", 0) == 1), dump()
        taken = status(name)["buffer"]["taken"]
        assert wait_for(
            lambda name=name, taken=taken: status(name)["buffer"]["taken"] >= taken + 5
        ), dump()


def test_mdns_port_taken_keeps_the_mesh_and_browses_without_announcing(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    """A stock ESP32 image's own responder holds 5353 without SO_REUSEADDR: here a socket
    does the same on host 1. fw-a's mesh still works, it says it does not announce, and it
    still finds fw-b and the gateway (python-zeroconf, host 3) by one-shot queries from an
    ephemeral port, which both answer by unicast (RFC 6762 6.7)."""
    exe = require_tool("micropython")
    require_tool("mpy-cross")
    lab = lab_factory(prefix="mn-", subnet="10.96.0.0/24", hosts=3)
    gw_ip = lab.address(3)
    lab.run(
        3,
        [
            sys.executable,
            "-m",
            "gateway",
            "--db",
            str(tmp_path / "gw.db"),
            "--udp-host",
            gw_ip,
            "--mdns-interface",
            gw_ip,
            "--http-port",
            "0",
            "--mesh-key",
            "handoff=00112233",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    holder = lab.run(
        1,
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 5353)); print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    _, logs = start_two_nodes(lab, tmp_path, exe, {"discovery": {"enabled": True}})
    status = functools.partial(read_status, tmp_path)
    dump = functools.partial(dump_logs, logs)

    assert wait_for(
        lambda: status("fw-a").get("role") == "leader" and status("fw-b").get("leader") == "fw-a"
    ), dump()
    assert wait_for(lambda: "fw-b" in status("fw-a").get("mdns_peers", [])), dump()
    assert wait_for(lambda: status("fw-a").get("gateway") == "%s:47471" % gw_ip), dump()
    assert status("fw-a")["announcing"] is False
    assert status("fw-b")["announcing"] is True
    assert "not announcing" in logs["fw-a"].read_text()


def test_safe_mode_after_failed_starts_and_a_clean_run_clears_the_count(tmp_path: Path) -> None:
    """main.py counts starts in boot_fails; a clean stop clears it; three failed starts in a
    row (a crash loop, watchdog resets) leave the app unstarted, the REPL free for a deploy."""
    exe = require_tool("micropython")
    require_tool("mpy-cross")
    folder = tmp_path / "fw"
    firmware_tool.build(folder)
    settings = {
        "node_id": "fw-s",
        "mesh": "safe",
        "run_ms": 300,
        "boot_file": str(folder / "boot_count"),
        "udp": {"interface": "127.0.0.1", "unicast_port": 48123},
        "discovery": {"enabled": False},
        "hw": {"kind": "unix"},
    }
    (folder / "config.json").write_text(json.dumps(firmware_tool.device_config(settings)))
    env = dict(os.environ, MICROPYPATH=".frozen:.")

    def start() -> str:
        done = subprocess.run(
            [exe, "main.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    (folder / "boot_fails").write_text("2")
    assert "role " in start()
    assert not (folder / "boot_fails").exists()  # ran and stopped cleanly: the count is gone
    (folder / "boot_fails").write_text("3")
    out = start()
    assert "safe mode" in out and "role " not in out, out
    assert (folder / "boot_fails").read_text() == "3"


def test_the_gateway_is_told_once_not_found_then_found_then_lost(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    """No gateway address: one line when none is found after the grace, one when mDNS finds
    the real gateway started later, one when its goodbye says it stopped (not a line a tick)."""
    require_tool("mpy-cross")
    lab = lab_factory(prefix="mg-", subnet="10.90.0.0/24", hosts=2)
    build = tmp_path / "build"
    firmware_tool.build(build)
    folder = tmp_path / "fw"
    install_firmware(build, folder, mpy_bits == 32)
    settings = {
        "node_id": "fw-a",
        "mesh": "gwlines",
        "mesh_key": "0011",
        "status_ms": 100,
        "print_status": False,
        "status_file": str(folder / "status.json"),
        "udp": {"interface": lab.address(1)},
        "hw": {"kind": "unix", "battery": 900},
    }
    (folder / "config.json").write_text(json.dumps(firmware_tool.device_config(settings)))
    log = folder / "out.log"
    with log.open("w") as out:
        lab.run(
            1,
            ["env", "MICROPYPATH=.frozen:.", mpy_exe, "main.py"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )

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
