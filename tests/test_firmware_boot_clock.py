"""A board with no stored boot id (flashed, files wiped) waits, boundedly, for its clock before
it draws a boot id: the firmware process on both unix ports, its wall clock held at 2000-01-01
(a board's after a power-on) until "NTP" sets it (``hw.clock_set_ms``, the unix layer's hook).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.mpy import install_firmware
from testkit.tools import require_tool
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.micropython]

EPOCH_2024 = 1_704_067_200  # wire.next_boot: a valid clock's boot id is the seconds since


def node_folder(tmp_path: Path, bits: int, port: int, hw: dict[str, Any], **extra: Any) -> Path:
    require_tool("mpy-cross")
    build = tmp_path / "build"
    if not build.exists():
        firmware_tool.build(build)
    folder = tmp_path / ("node-%d" % port)
    install_firmware(build, folder, frozen=bits == 32)
    settings = {
        "node_id": "fw-clock",
        "mesh": "clock",
        "status_ms": 100,
        "print_status": False,
        "status_file": str(folder / "status.json"),
        "run_ms": 600,
        "udp": {"interface": "127.0.0.1", "port": port},
        "discovery": {"enabled": False},  # (no other run's gateway found on loopback)
        "hw": {"kind": "unix"} | hw,
    } | extra
    (folder / "config.json").write_text(json.dumps(firmware_tool.device_config(settings)))
    return folder


def run_node(exe: str, folder: Path) -> tuple[str, dict[str, Any]]:
    done = subprocess.run(
        ["env", "MICROPYPATH=.frozen:.", exe, "main.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads((folder / "status.json").read_text())


def test_a_flashed_board_waits_for_ntp_and_draws_a_clock_based_boot_id(
    tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    folder = node_folder(tmp_path, mpy_bits, 47911, {"clock_set_ms": 700}, clock_wait_ms=5000)
    out, status = run_node(mpy_exe, folder)
    assert "waiting up to 5000 ms for the clock" in out, out
    waited = int(out.split("boot: waited ")[1].split()[0])
    assert 700 <= waited < 5000, out
    # Drawn after the clock was set: above every id this board drew before (seconds since 2024).
    assert status["boot"] >= int(time.time()) - EPOCH_2024 - 120, status
    assert (folder / "boot_count").read_text().strip() == str(status["boot"])
    assert "boot ids may repeat" not in out


def test_the_wait_is_bounded_and_a_clockless_board_still_runs(
    tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    folder = node_folder(tmp_path, mpy_bits, 47912, {"clock_set_ms": -1}, clock_wait_ms=800)
    out, status = run_node(mpy_exe, folder)
    waited = int(out.split("boot: waited ")[1].split()[0])
    assert 800 <= waited < 5000, out
    assert status["boot"] == 1 and "boot ids may repeat" in out, out  # flagged, as before
    assert status["role"] == "leader", status  # deploy and the mesh never depended on it


def test_a_stored_boot_id_needs_no_clock(tmp_path: Path, mpy_exe: str, mpy_bits: int) -> None:
    folder = node_folder(tmp_path, mpy_bits, 47913, {"clock_set_ms": -1}, clock_wait_ms=5000)
    (folder / "boot_count").write_text("41\n")
    out, status = run_node(mpy_exe, folder)
    assert "waiting" not in out and status["boot"] == 42, out


def test_ctrl_c_during_the_wait_stops_the_board_on_purpose(
    tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    folder = node_folder(tmp_path, mpy_bits, 47914, {"clock_set_ms": -1}, clock_wait_ms=60000)
    proc = subprocess.Popen(
        ["env", "MICROPYPATH=.frozen:.", mpy_exe, "main.py"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (folder / "boot_fails").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # in the wait by now (it polls every 100 ms)
        os.kill(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "waiting up to 60000 ms" in out and "Traceback" not in out, out
    # Stopped on purpose (as a deploy's interrupt): no failed start counted, no boot id drawn.
    assert not (folder / "boot_fails").exists() and not (folder / "boot_count").exists(), out
