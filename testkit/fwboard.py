"""Firmware boards on the unix port in a namespace lab, started again whenever they exit, as a
board's reset starts it again (over-the-air updates reset the board: tests/test_firmware_ota.py,
``meshelect bench ota``).

    folder = install_board(build, tmp / "fw-1", frozen=False)
    install_esp32(folder)                           # optional: the esp32 stand-in (image OTA)
    start_board(lab, 1, folder, exe, settings)      # settings: config.json, checked as deploy
    board_status(folder)                            # its status file, {} before the first
    otadata(folder)                                 # the stand-in's boot slot and states
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testkit.mpy import install_firmware
from testkit.netns import Lab
from testkit.tools import SOURCE_ROOT

# The process runs again after every exit but a clean one (0): "exit N" marks each reset;
# mpy.pid names the running interpreter (to kill it as a power cut would). A board with the
# esp32 stand-in (install_esp32) runs its bootloader step before each start, as a reset does.
SUPERVISOR = """
while true; do
  [ -f esp32.py ] && env MICROPYPATH=. "$0" -c "import esp32; esp32.bootloader()"
  env MICROPYPATH=.frozen:. "$0" main.py & echo $! > mpy.pid; wait $!; rc=$?
  echo "exit $rc"
  [ "$rc" -eq 0 ] && break
done
"""


def install_board(build: Path, folder: Path, frozen: bool) -> Path:
    """A board's filesystem: a copy of the build (an update moves its folders: not links into
    a build others share), or only boot.py and main.py for an image with the code frozen in."""
    if frozen:
        install_firmware(build, folder, frozen=True)
    else:
        shutil.copytree(build, folder)
    return folder


def install_esp32(folder: Path) -> None:
    """Give a board the test-only ``esp32`` stand-in (testkit/esp32.py: OTA app slots over
    files under ``folder/flash``), as ``esp32.py`` on its path."""
    shutil.copy(Path(__file__).with_name("esp32.py"), folder / "esp32.py")


def otadata(folder: Path) -> dict[str, Any]:
    """The stand-in's boot state: ``boot``, ``running`` and each slot's ``states``."""
    try:
        data = json.loads((folder / "flash" / "otadata").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start_board(lab: Lab, host: int, folder: Path, exe: str, settings: dict[str, Any]) -> None:
    """Write ``settings`` as config.json (with its status file in ``folder``) and start the
    supervised board on ``host``; its output goes to ``folder/out.log``."""
    from tools import firmware as firmware_tool

    settings = dict(settings, status_file=str(folder / "status.json"))
    (folder / "config.json").write_text(json.dumps(firmware_tool.device_config(settings)))
    with (folder / "out.log").open("w") as log:
        lab.run(
            host,
            ["bash", "-c", SUPERVISOR, exe],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )


def board_status(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start_gateway(
    lab: Lab, host: int, db: Path, mesh_keys: str, http_port: int = 0, extra: Sequence[str] = ()
) -> None:
    """The real gateway on ``host`` (UDP 47471, HTTP on ``http_port``, no mDNS; ``extra``
    options)."""
    address = lab.address(host)
    lab.run(
        host,
        [
            sys.executable,
            "-m",
            "gateway",
            "--db",
            str(db),
            "--udp-host",
            address,
            "--no-mdns",
            "--http-host",
            address,
            "--http-port",
            str(http_port),
            "--mesh-key",
            mesh_keys,
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=SOURCE_ROOT,
        env=dict(os.environ, PYTHONPATH=str(SOURCE_ROOT)),
    )
