"""A mixed mesh: 3 Pi agents (CPython) and 3 firmware nodes (the MicroPython unix port running
the built .mpy), one per network namespace, with the real gateway on a seventh host. Same
mesh key everywhere (HMAC), no addresses configured: peers by multicast, the gateway by mDNS.

The best node is a firmware node: it leads. kill -9 it: a Pi agent takes over. kill -9 that
Pi agent: a firmware node takes over. Every reading of the surviving nodes reaches the gateway
exactly once, and the killed nodes lose nothing they saw confirmed. Failover times are printed
(no timed assertion), next to the heap peak of the firmware processes.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from testkit.mpy import install_firmware
from testkit.netns import Lab
from testkit.tools import require_tool
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.netns, pytest.mark.micropython, pytest.mark.slow]

PREFIX = "mf-"
SUBNET = "10.94.0.0/24"
MESH = "mixed"
KEY = b"mixed-mesh-key".hex()  # hex, as agents and the gateway take it
WAIT_S = 30.0
PI_HOSTS = (1, 2, 3)
FW_HOSTS = (4, 5, 6)
GW_HOST = 7
# Battery per host: fw-4 leads; after it, Pi n1; after n1, fw-5.
BATTERY = {4: 990, 1: 900, 5: 800, 2: 600, 6: 500, 3: 400}


def pi_config(host: int, state_dir: Path) -> str:
    return (
        "\n".join(
            [
                'node_id = "n%d"' % host,
                'mesh = "%s"' % MESH,
                'mesh_key = "%s"' % KEY,
                'transport = "udp"',
                "heartbeat_ms = 250",
                'state_dir = "%s"' % state_dir,
                'log_format = "json"',
                "status_ms = 100",
                "[data]",
                "sample_ms = 200",
                "[[sensors]]",
                'type = "simulated"',
                "battery_start = %d" % BATTERY[host],
                "[sensors.metrics.temp]",
                "base = 21000",
            ]
        )
        + "\n"
    )


def fw_config(host: int, ip: str, folder: Path) -> dict[str, Any]:
    return firmware_tool.device_config(
        {
            "node_id": "fw-%d" % host,
            "mesh": MESH,
            "mesh_key": KEY,
            "heartbeat_ms": 250,
            "data": {"sample_ms": 200},
            "status_ms": 100,
            "print_status": False,
            "status_file": str(folder / "status.json"),
            "boot_file": str(folder / "boot_count"),
            "udp": {"interface": ip},
            "hw": {"kind": "unix", "battery": BATTERY[host], "link": 1000},
        }
    )


class MixedMesh:
    def __init__(self, lab: Lab, tmp: Path, exe: str, frozen: bool = False) -> None:
        self.exe = exe  # the MicroPython the firmware nodes run on
        self.frozen = frozen  # its image holds the firmware (the 32-bit stand-in)
        self.lab = lab
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        self.db = tmp / "gateway.db"
        self.build = tmp / "build"
        self.files: list[Any] = []

    def _log(self, path: Path) -> Any:
        f = path.open("w")
        self.files.append(f)
        return f

    def close(self) -> None:
        for f in self.files:
            f.close()

    def start_gateway(self) -> None:
        ip = self.lab.address(GW_HOST)
        self.procs[GW_HOST] = self.lab.run(
            GW_HOST,
            [
                sys.executable,
                "-m",
                "gateway",
                "--db",
                str(self.db),
                "--udp-host",
                ip,
                "--mdns-interface",
                ip,
                "--http-port",
                "0",
                "--mesh-key",
                "%s=%s" % (MESH, KEY),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log(self.tmp / "gateway.log"),
            cwd=REPO_ROOT,
            env=_env(),
        )

    def start_pi(self, host: int) -> None:
        state = self.tmp / ("pi%d" % host)
        state.mkdir()
        config = self.tmp / ("pi%d.toml" % host)
        config.write_text(pi_config(host, state))
        self.procs[host] = self.lab.run(
            host,
            [sys.executable, "-m", "agent.runtime", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log(self.tmp / ("pi%d.log" % host)),
            cwd=REPO_ROOT,
            env=_env(),
        )

    def start_fw(self, host: int) -> None:
        exe = self.exe
        if not self.build.exists():
            firmware_tool.build(self.build)
        folder = self.tmp / ("fw%d" % host)
        install_firmware(self.build, folder, self.frozen)
        (folder / "config.json").write_text(
            json.dumps(fw_config(host, self.lab.address(host), folder))
        )
        self.procs[host] = self.lab.run(
            host,
            ["env", "MICROPYPATH=.frozen:.", exe, "main.py"],
            stdout=self._log(folder / "out.log"),
            stderr=subprocess.STDOUT,
            cwd=folder,
        )

    def status(self, host: int) -> dict[str, Any] | None:
        if host in FW_HOSTS:
            path = self.tmp / ("fw%d" % host) / "status.json"
        else:
            path = self.tmp / ("pi%d" % host) / "status.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def alive(self) -> list[int]:
        return sorted(h for h in (*PI_HOSTS, *FW_HOSTS) if self.procs[h].poll() is None)

    def agreed(self, hosts: list[int]) -> str | None:
        leaders = set()
        for host in hosts:
            s = self.status(host)
            if s is None:
                return None
            leaders.add(s["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    def kill(self, host: int) -> float:
        self.procs[host].kill()
        self.procs[host].wait(5)
        return time.monotonic()

    def stored(self) -> dict[str, list[int]]:
        """node -> sorted seqs of its current boot stored at the gateway (one row per reading)."""
        if not self.db.exists():
            return {}
        db = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
        try:
            rows = db.execute(
                "SELECT node, boot, seq FROM readings WHERE mesh = ?", (MESH,)
            ).fetchall()
        except sqlite3.Error:
            return {}
        finally:
            db.close()
        out: dict[str, list[int]] = {}
        boots: dict[str, int] = {}
        for node, boot, _seq in rows:
            boots[node] = max(boots.get(node, 0), boot)
        for node, boot, seq in rows:
            if boot == boots[node]:
                out.setdefault(node, []).append(seq)
        return {node: sorted(seqs) for node, seqs in out.items()}

    def logs(self) -> str:
        parts = []
        for path in sorted(self.tmp.glob("*.log")) + sorted(self.tmp.glob("fw*/out.log")):
            text = path.read_text(errors="replace").splitlines()[-12:]
            parts.append(
                "--- %s\n%s"
                % (path.name if path.parent == self.tmp else path.parent.name, "\n".join(text))
            )
        return "\n".join(parts)


def _term_kept(mesh: MixedMesh, host: int) -> bool:
    """The term file of ``host`` holds the highest term its status shows."""
    name = ("fw%d/boot_count.term" if host in FW_HOSTS else "pi%d/term") % host
    path = mesh.tmp / name
    status = mesh.status(host)
    return path.exists() and status is not None and int(path.read_text()) == status["max_term"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


wait_for = functools.partial(poll_until, timeout=WAIT_S)


def test_mixed_mesh_elects_fails_over_both_ways_and_stores_every_reading_once(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    require_tool("mpy-cross")
    lab = lab_factory(prefix=PREFIX, subnet=SUBNET, hosts=7)
    mesh = MixedMesh(lab, tmp_path, mpy_exe, frozen=mpy_bits == 32)
    try:
        run_scenario(mesh)
    finally:
        lab.close()
        mesh.close()


def run_scenario(mesh: MixedMesh) -> None:
    mesh.start_gateway()
    for host in FW_HOSTS:
        mesh.start_fw(host)
    for host in PI_HOSTS:
        mesh.start_pi(host)
    everyone = [*PI_HOSTS, *FW_HOSTS]
    assert wait_for(lambda: mesh.agreed(everyone) == "fw-4"), mesh.logs()
    # Batches flow: the gateway (found by mDNS) stores readings of both runtimes.
    assert wait_for(lambda: {"n1", "fw-5"} <= set(mesh.stored())), mesh.logs()

    # Kill the firmware leader: the best Pi agent takes over.
    taken_fw4 = mesh.status(4)["buffer"]["confirmed"]  # type: ignore[index]
    killed_at = mesh.kill(4)
    survivors = [1, 2, 3, 5, 6]
    assert wait_for(lambda: mesh.agreed(survivors) == "n1", step=0.01), mesh.logs()
    fw_to_pi_ms = (time.monotonic() - killed_at) * 1000

    # Kill that Pi leader: the best firmware node takes over.
    killed_at = mesh.kill(1)
    survivors = [2, 3, 5, 6]
    assert wait_for(lambda: mesh.agreed(survivors) == "fw-5", step=0.01), mesh.logs()
    pi_to_fw_ms = (time.monotonic() - killed_at) * 1000
    terms = {mesh.status(h)["term"] for h in survivors}  # type: ignore[index]
    assert len(terms) == 1 and terms.pop() >= 3
    # Both runtimes keep the highest term seen for their next boot (a board beside its boot
    # counter, a Pi in its state dir).
    for host in survivors:
        assert wait_for(partial(_term_kept, mesh, host)), host

    # Stop sampling is not possible from outside: instead, every reading a survivor took up to
    # a moment must reach the gateway. Take that moment now, then wait for the gateway.
    taken = {
        ("fw-%d" if h in FW_HOSTS else "n%d") % h: mesh.status(h)["buffer"]["taken"]  # type: ignore[index]
        for h in survivors
    }

    def all_stored() -> dict[str, list[int]] | None:
        stored = mesh.stored()
        for node, count in taken.items():
            have = stored.get(node, [])
            if have[:count] != list(range(1, count + 1)):
                return None
        return stored

    stored = wait_for(all_stored, step=0.5)
    assert stored is not None, (taken, {k: len(v) for k, v in mesh.stored().items()}, mesh.logs())
    # Exactly once: the gateway's rows are unique per (mesh, node, boot, seq); no gaps either.
    for node, seqs in stored.items():
        assert len(seqs) == len(set(seqs)), node
    # The killed firmware leader: everything it saw confirmed is stored.
    assert stored.get("fw-4", [])[:taken_fw4] == list(range(1, taken_fw4 + 1))
    # mDNS on the firmware found the Pi agents of its mesh (python-zeroconf's advertisements).
    assert {"n2", "n3"} <= set(mesh.status(5)["mdns_peers"])  # type: ignore[index]
    heaps = {h: mesh.status(h)["peak_heap"] for h in (5, 6)}  # type: ignore[index]
    errors = {h: mesh.status(h)["errors"] for h in (5, 6)}  # type: ignore[index]
    assert errors == {5: 0, 6: 0}, mesh.logs()
    print(
        "failover fw->pi %.0f ms, pi->fw %.0f ms (heartbeat 250 ms); firmware peak live heap %s"
        % (fw_to_pi_ms, pi_to_fw_ms, heaps)
    )


def test_pi_only_failover_measured_the_same_way(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    """The reference for the figures above: a Pi-only mesh, the same harness and polling."""
    lab = lab_factory(prefix=PREFIX, subnet=SUBNET, hosts=7)
    mesh = MixedMesh(lab, tmp_path, "")  # no firmware node
    try:
        mesh.start_gateway()
        for host in PI_HOSTS:
            mesh.start_pi(host)
        assert wait_for(lambda: mesh.agreed(list(PI_HOSTS)) == "n1"), mesh.logs()
        killed_at = mesh.kill(1)
        assert wait_for(lambda: mesh.agreed([2, 3]) == "n2", step=0.01), mesh.logs()
        print(
            "failover pi->pi %.0f ms (heartbeat 250 ms)" % ((time.monotonic() - killed_at) * 1000)
        )
    finally:
        lab.close()
        mesh.close()
