"""A lab file turned into working drivers: ``open_lab(spec, workdir) -> HilLab``.

Real labs (here): the boards are already there; the firmware is built once into ``workdir``
and deployed by ``EsptoolFirmwareDriver``. Virtual labs (``hil.virtual``): the hosts, the
gateway and the boards' processes are made on this machine. Both return a ``hil.target.HilLab``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hil.drivers import (
    AlwaysOnPowerDriver,
    CommandPowerDriver,
    ConsoleDriver,
    EsptoolFirmwareDriver,
    GatewayDriver,
    PowerDriver,
    SerialLines,
    build_firmware,
)
from hil.resources import LabSpec
from hil.target import Board, HilLab
from tools import firmware as firmware_tool


def open_lab(spec: LabSpec, workdir: Path) -> HilLab:
    if spec.kind == "virtual":
        from hil.virtual import open_virtual_lab  # imports the netns helpers: virtual only

        return open_virtual_lab(spec, workdir)
    return open_real_lab(spec, workdir)


def open_real_lab(spec: LabSpec, workdir: Path) -> HilLab:
    manifest, build_hash = build_firmware(workdir / "build")
    lab = HilLab(spec, {}, None, build_hash, manifest, workdir)
    try:
        if spec.gateway is not None:
            lab.gateway = GatewayDriver(spec.gateway)
            lab.closers.append(lab.gateway.close)
        for board in spec.boards:
            assert board.serial is not None  # checked by the lab file parser
            lines = SerialLines(board.serial)
            lab.closers.append(lines.close)
            power: PowerDriver = (
                CommandPowerDriver(board.power, board.name)
                if board.power is not None
                else AlwaysOnPowerDriver(board.name)
            )
            firmware = EsptoolFirmwareDriver(
                board, workdir / "build", log=print, release=lines.close
            )
            lab.boards[board.name] = Board(
                board.name, firmware, power, ConsoleDriver(board.name, lines)
            )
    except BaseException:
        lab.close()
        raise
    return lab


def git_sha(root: Path | None = None) -> str:
    """The checkout's commit (read-only git call), or "unknown" outside a checkout."""
    folder = root or firmware_tool.repo_root()
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"
