"""`meshelect bench ota`: a rolling over-the-air update of a real mesh (needs root).

N firmware boards (MicroPython unix port, one network namespace each, each started again
after its reset as a board is) and the real gateway, which serves the bundle (``--ota-dir``)
and takes the boards' reports; ``meshelect firmware ota push`` runs on the gateway's host and
updates one board at a time, the leader last (it asks the gateway who leads before every
board). Printed: the time the whole update took
and per board, readings lost (taken by a board in any of its boots and never stored: the goal
is 0), and elections caused (the rise of the mesh's term: the leader's handover is one).
No figure is asserted (tests/test_firmware_ota.py runs a small one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testkit.fwboard import board_status, install_board, start_board, start_gateway
from testkit.gateway import stored_readings
from testkit.mpy import interpreter
from testkit.netns import Lab
from testkit.waiting import poll_until
from tools import firmware as firmware_tool
from tools import ota

MESH = "rolling"
KEY = "00112233445566778899aabbccddeeff"
HTTP_PORT = 8080


def run(
    nodes: int = 6, bits: int = 64, trial_s: int = 60, timeout: float = 120.0
) -> dict[str, Any]:
    exe = interpreter(bits)
    with tempfile.TemporaryDirectory(prefix="meshelect-bench-ota-") as tmp_name:
        tmp = Path(tmp_name)
        with Lab("mbo-", "10.98.0.0/24", nodes + 1) as lab:
            return _run(lab, tmp, exe, nodes, bits, trial_s, timeout)


def _run(
    lab: Lab, tmp: Path, exe: str, nodes: int, bits: int, trial_s: int, timeout: float
) -> dict[str, Any]:
    gw_host = nodes + 1
    gw = lab.address(gw_host)
    db = tmp / "gw.db"
    bundles = tmp / "bundles"
    start_gateway(lab, gw_host, db, "%s=%s" % (MESH, KEY), HTTP_PORT, ["--ota-dir", str(bundles)])
    build = tmp / "build"
    firmware_tool.build(build)
    key = bytes(range(32))
    (tmp / "update.key").write_text(key.hex())
    ota.bundle(build, bundles / "v2", "v2", key, trial_s=trial_s)
    folders = {}
    for i in range(1, nodes + 1):
        name = "fw-%d" % i
        folder = install_board(build, tmp / name, frozen=bits == 32)
        settings = {
            "node_id": name,
            "mesh": MESH,
            "mesh_key": KEY,
            "update_key": key.hex(),
            "status_ms": 100,
            "udp": {"interface": lab.address(i)},
            "gateway": {"address": "%s:47471" % gw},
            "discovery": {"enabled": False},
            "data": {"sample_ms": 500},
            # Distinct scores: fw-N leads at first.
            "hw": {"kind": "unix", "battery": 400 + 100 * i},
        }
        start_board(lab, i, folder, exe, settings)
        folders[name] = folder

    def statuses() -> dict[str, dict[str, Any]]:
        return {name: board_status(folder) for name, folder in folders.items()}

    def agreed() -> str | None:
        leaders = {s.get("leader") for s in statuses().values()}
        return leaders.pop() if len(leaders) == 1 else None

    if not poll_until(lambda: agreed() is not None, timeout=60):
        raise RuntimeError("the mesh did not elect one leader: %s" % statuses())
    first_leader = agreed()
    term0 = max(s["term"] for s in statuses().values())
    # Every boot's readings: the last "taken" its status showed (a board stops sampling
    # before it resets, so the last status of a boot has them all).
    taken: dict[tuple[str, int], int] = {}
    held: dict[tuple[str, int], int] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for name, status in statuses().items():
                if "boot" in status:
                    boot = (name, status["boot"])
                    taken[boot] = max(taken.get(boot, 0), status["buffer"]["taken"])
                    held[boot] = status["buffer"]["depth"]
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    argv = [sys.executable, "-m", "agent", "firmware", "ota", "push"]
    argv += ["--bundle", str(tmp / "bundles" / "v2"), "--key-file", str(tmp / "update.key")]
    # The gateway serves the bundle and takes the boards' reports (its dashboard shows them).
    gateway_url = "http://%s:%d" % (gw, HTTP_PORT)
    argv += ["--url", gateway_url + "/ota/v2/", "--timeout", str(timeout)]
    argv += ["--gateway", gateway_url, "--mesh", MESH]
    for i in range(1, nodes + 1):
        argv += ["--board", "fw-%d=%s" % (i, lab.address(i))]
    started = time.monotonic()
    pusher = lab.run(gw_host, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = pusher.communicate(timeout=timeout * nodes + 60)
    seconds = time.monotonic() - started
    # Let the gateway confirm what the boards hold, then count.
    poll_until(
        lambda: all(s.get("buffer", {}).get("depth", 1) == 0 for s in statuses().values()),
        timeout=20,
    )
    time.sleep(0.5)
    stop.set()
    watcher.join()
    final = statuses()
    listing = lab.exec(
        gw_host,
        [
            sys.executable,
            "-c",
            "import urllib.request as u; "
            "print(u.urlopen('%s/api/ota').read().decode())" % gateway_url,
        ],
    ).stdout
    stored = stored_readings(str(db), MESH)
    lost = 0
    for boot, count in taken.items():
        lost += max(0, count - len(stored.get(boot, set())) - held.get(boot, 0))
    order = [line.split(":")[0] for line in out.splitlines() if line.endswith("notified (v2)")]
    return {
        "nodes": nodes,
        "bits": bits,
        "seconds": round(seconds, 1),
        "per_board": [line for line in out.splitlines() if " in " in line and ": " in line],
        "rc": pusher.returncode,
        "first_leader": first_leader,
        "order": order,
        "leader_last": bool(order) and order[-1] == first_leader,
        "elections": max(s.get("term", 0) for s in final.values()) - term0,
        "taken": sum(taken.values()),
        "stored": sum(len(v) for v in stored.values()),
        "lost": lost,
        "versions": sorted({s.get("ota", {}).get("version", "") for s in final.values()}),
        "output": out,
        "gateway_ota": json.loads(listing),
    }


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meshelect bench ota", description=__doc__)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--bits", type=int, default=64, choices=(64, 32))
    parser.add_argument("--trial-s", type=int, default=60)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.nodes, args.bits, args.trial_s)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0 if result["rc"] == 0 else 1
    print(result["output"], end="")
    print(
        "rolling update of %d boards (%d-bit unix port): %.1f s, readings lost %d of %d, "
        "elections caused %d, leader %s updated last: %s, versions now %s"
        % (
            result["nodes"],
            result["bits"],
            result["seconds"],
            result["lost"],
            result["taken"],
            result["elections"],
            result["first_leader"],
            result["leader_last"],
            ",".join(result["versions"]),
        )
    )
    return 0 if result["rc"] == 0 else 1
