"""A virtual lab on this machine: one network namespace per board plus one for the gateway,
joined by a bridge (``testkit.netns.Lab``), each board a real MicroPython unix-port
process running the built firmware, the real gateway process, peers found by multicast and
mDNS exactly as on Wi-Fi. Needs root, iproute2, nftables, micropython and mpy-cross.

Hosts 1..n are the boards in lab-file order, host n+1 the gateway. The gateway's HTTP API
listens on its namespace's loopback; ``GatewayDriver`` reaches it from a thread inside that
namespace (``hil.nsthread``), so nothing at all is created in the root namespace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from hil.drivers import (
    ConsoleDriver,
    FileLines,
    GatewayDriver,
    HilError,
    ProcessPowerDriver,
    UnixFirmwareDriver,
    VirtualProcess,
    build_firmware,
)
from hil.resources import Gateway, LabSpec
from hil.target import Board, HilLab
from testkit.netns import Lab, require_netns
from testkit.tools import SOURCE_ROOT, MissingTool, python_env, require_tool

GATEWAY_HTTP_PORT = 8470  # on the gateway namespace's own loopback: no clash possible
GATEWAY_START_S = 20.0


def open_virtual_lab(spec: LabSpec, workdir: Path) -> HilLab:
    try:
        micropython = require_tool("micropython", "pip install 'meshelect[micropython]'")
        require_netns()
    except MissingTool as exc:
        raise HilError("virtual lab %s: %s" % (spec.name, exc)) from None
    gateway_host = len(spec.boards) + 1
    netlab = Lab(spec.prefix, spec.subnet, hosts=gateway_host)
    build_dir = workdir / "build"
    # A kept workdir (--hil-workdir) may hold a previous session: start from blank boards and
    # an empty gateway database (its fencing terms would refuse the new mesh's batches).
    for board in spec.boards:
        shutil.rmtree(workdir / board.name, ignore_errors=True)
    for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm", "gateway.log"):
        (workdir / name).unlink(missing_ok=True)
    manifest, build_hash = build_firmware(build_dir)
    netlab.open()
    lab = HilLab(spec, {}, None, build_hash, manifest, workdir, closers=[netlab.close])
    try:
        _start_gateway(lab, netlab, gateway_host)
        for board in spec.boards:
            assert board.virtual is not None  # checked by the lab file parser
            host = board.virtual.host

            def spawn(
                argv: Sequence[str], cwd: Path, out: IO[Any], host: int = host
            ) -> subprocess.Popen[Any]:
                return netlab.run(host, argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

            process = VirtualProcess(
                workdir / board.name, spawn, micropython, heapsize=board.virtual.heapsize
            )
            lab.closers.append(process.kill)
            lab.boards[board.name] = Board(
                board.name,
                UnixFirmwareDriver(board, build_dir, process, netlab.address(host)),
                ProcessPowerDriver(process),
                ConsoleDriver(board.name, FileLines(process.log)),
            )
    except BaseException:
        lab.close()
        raise
    return lab


def _start_gateway(lab: HilLab, netlab: Any, host: int) -> None:
    spec = lab.spec
    address = netlab.address(host)
    argv = [
        sys.executable, "-m", "gateway",
        "--db", str(lab.workdir / "gateway.db"),
        "--udp-host", address,
        "--mdns-interface", address,
        "--http-host", "127.0.0.1",
        "--http-port", str(GATEWAY_HTTP_PORT),
        "--log-level", "warning",
    ]  # fmt: skip
    keys = sorted({str(b.config.get("mesh_key", "")) for b in spec.boards} - {""})
    for key in keys:
        argv += ["--mesh-key", "%s=%s" % (spec.mesh, key)]
    argv += list(spec.gateway_args)
    with (lab.workdir / "gateway.log").open("ab") as log:
        netlab.run(
            host, argv, stdout=log, stderr=subprocess.STDOUT, cwd=SOURCE_ROOT, env=python_env()
        )
    lab.gateway = GatewayDriver(
        Gateway("http://127.0.0.1:%d" % GATEWAY_HTTP_PORT, netns=netlab.ns(host))
    )
    lab.closers.append(lab.gateway.close)
    try:
        lab.gateway.wait_healthy(GATEWAY_START_S)
    except HilError as exc:
        tail = (lab.workdir / "gateway.log").read_text(errors="replace")[-2000:]
        raise HilError("%s; gateway log:\n%s" % (exc, tail)) from None
