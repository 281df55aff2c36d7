"""A sleepy member in a real mesh: three Pi agents and the real gateway in namespaces, and a
sleepy firmware node (the MicroPython unix port) on a fourth host.

The sleepy node has the best battery and link of all, but never leads. Its deep sleep is the
process ending with status 4 (firmware/hw/unix.py); this test restarts it after its wake
interval, as the RTC timer would, with its RTC memory kept in a file. While it sleeps, the
leader is killed (kill -9); at its next wake it finds the new leader and its readings go on.
At the end every reading it took is stored once or still held by it (0 lost, 0 duplicated);
the gateway knew its wake interval and raised no silent alert while it slept, and raises one
when it stops waking. The energy reports reach the gateway: the leader's rate as leader is
above a member's, and the sleepy node's is far below both.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from testkit.meshlab import GATEWAY_PORT, MeshUnderTest
from testkit.mpy import install_firmware
from testkit.tools import require_tool
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.netns, pytest.mark.micropython, pytest.mark.slow]

MESH = "sleepy"
SLEEPY_HOST = 4
SLEEP_MS = 3000
SILENT_S = 3  # the gateway's --silent-after: a sleepy node may go 2 x 3 s + 3 s unheard
DEEP_SLEEP_EXIT = 4
ENERGY = "[energy]\nreport_ms = 1000\n"


class SleepyNode:
    """The sleepy firmware node, restarted after each deep sleep until ``stop_waking``."""

    def __init__(self, mesh: MeshUnderTest, exe: str, folder: Path) -> None:
        self.mesh = mesh
        self.exe = exe
        self.folder = folder
        self.wakes = 0
        self.asleep = threading.Event()  # set while the process is down between wakes
        self.exits: list[int] = []
        self._waking = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.log = (folder / "out.log").open("a")

    def start(self) -> None:
        self._thread.start()

    def stop_waking(self) -> None:
        self._waking = False
        self._thread.join(30)
        self.log.close()

    def _run(self) -> None:
        while self._waking:
            self.asleep.clear()
            proc = self.mesh.lab.run(
                SLEEPY_HOST,
                ["env", "MICROPYPATH=.frozen:.", self.exe, "main.py"],
                stdout=self.log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
            self.wakes += 1
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(5)
            self.exits.append(code)
            if code != DEEP_SLEEP_EXIT:
                return
            self.asleep.set()
            time.sleep(SLEEP_MS / 1000)  # the RTC timer

    def kept(self) -> list[Any]:
        """The state its last deep sleep kept (agent/core/sleepy.py ``save``)."""
        return list(cbor2.loads((self.folder / "rtc").read_bytes()))

    def output(self) -> str:
        return (self.folder / "out.log").read_text()


def sleepy_config(ip: str, gateway: str, folder: Path) -> dict[str, Any]:
    return firmware_tool.device_config(
        {
            "node_id": "fw-sleepy",
            "mesh": MESH,
            "heartbeat_ms": 250,
            "boot_file": str(folder / "boot_count"),
            "udp": {"interface": ip},
            "gateway": {"address": gateway},
            "discovery": {"enabled": False},
            "sleep": {"interval_ms": SLEEP_MS, "listen_ms": 2000, "confirm_ms": 3000},
            # The best score of the mesh, were it eligible.
            "hw": {"kind": "unix", "battery": 1000, "link": 1000, "rtc_file": "rtc"},
        }
    )


def test_sleepy_member_across_a_failover_while_it_sleeps(tmp_path: Path) -> None:
    exe = require_tool("micropython")
    build = tmp_path / "build"
    firmware_tool.build(build)
    folder = tmp_path / "sleepy"
    install_firmware(build, folder)
    mesh = MeshUnderTest(
        SLEEPY_HOST,
        "udp",
        mesh=MESH,
        prefix="sl-",
        subnet="10.95.0.0/24",
        gateway_args=("--silent-after", "%ds" % SILENT_S),
        # The agents' default: a reading a second. (At 5 a second a member sends more frames
        # than its leader, which batches them: docs/design.md, "Energy accounting".)
        sample_ms=1000,
    )
    node = None
    try:
        mesh.open()
        for host, battery in ((1, 950), (2, 800), (3, 600)):
            mesh.start_agent(host, battery, extra=ENERGY)
        assert mesh.wait_for(lambda: mesh.agreed_leader([1, 2, 3]) == "n1", 30)
        gateway = "%s:%d" % (mesh.lab.address(mesh.gw_host), GATEWAY_PORT)
        config = sleepy_config(mesh.lab.address(SLEEPY_HOST), gateway, folder)
        (folder / "config.json").write_text(json.dumps(config))
        node = SleepyNode(mesh, exe, folder)
        node.start()

        # A few wakes with n1 leading; the gateway knows the interval and stores readings.
        assert mesh.wait_for(lambda: node.wakes >= 3, 40), node.output()
        assert mesh.wait_for(
            lambda: mesh.members().get("fw-sleepy", {}).get("sleep_ms") == SLEEP_MS, 20
        ), mesh.members()
        # Kill the leader while the sleepy node sleeps.
        assert node.asleep.wait(30), node.output()
        mesh.kill(1)
        wakes_at_kill = node.wakes
        assert mesh.wait_for(lambda: mesh.agreed_leader([2, 3]) == "n2", 30)
        # It wakes, finds n2 and goes on: readings of the wakes after the kill are stored.
        assert mesh.wait_for(lambda: node.wakes >= wakes_at_kill + 4, 60), node.output()
        boot = node.kept()[1]
        assert mesh.wait_for(lambda: len(mesh.stored().get(("fw-sleepy", boot), ())) >= 8, 30)
        # Asleep more than the gateway's silent time, never alerted as silent.
        assert mesh.silent_alerts("fw-sleepy") == []
        view = mesh.members()
        sleepy = view["fw-sleepy"]
        assert sleepy["sleep_ms"] == SLEEP_MS and sleepy["next_wake_ms"] is not None
        assert sleepy["flags"] & 32  # F_SLEEPY, from its heartbeats

        # It stops waking: after two missed wakes (and the slack) it is silent.
        node.stop_waking()
        assert node.exits and all(code == DEEP_SLEEP_EXIT for code in node.exits), node.exits
        state = node.kept()
        assert mesh.wait_for(
            lambda: mesh.silent_alerts("fw-sleepy") != [], 2 * SLEEP_MS / 1000 + SILENT_S + 20
        )
        alert = mesh.silent_alerts("fw-sleepy")[0]
        assert "missed its wakes" in alert["message"]

        # Exactly once: every seq it took is stored once or still held by it.
        taken = state[3] - 1  # next seq - 1
        held = {row[0] for row in state[7]}
        stored = mesh.stored().get(("fw-sleepy", boot), set())
        lost = sorted(set(range(1, taken + 1)) - stored - held)
        duplicated = mesh.conflicts("fw-sleepy")
        print(
            "sleepy member: %d wakes, taken %d, stored %d, held %d, lost %d, duplicated %d"
            % (node.wakes, taken, len(stored), len(held), len(lost), duplicated)
        )
        assert lost == [] and duplicated == 0
        assert stored <= set(range(1, taken + 1))
        assert len({b for n, b in mesh.stored() if n == "fw-sleepy"}) == 1  # one boot throughout

        # Never led: no election names it, and it never said it leads.
        elections = mesh.gateway_json("/api/elections?mesh=%s" % MESH)
        assert elections and all(e["leader"] != "fw-sleepy" for e in elections)
        assert "role leader" not in node.output() and "role candidate" not in node.output()

        # Energy: the leader's rate as leader is above a member's; a sleepy node's far below.
        view = mesh.members()
        n2, n3, sleepy = view["n2"]["energy"], view["n3"]["energy"], view["fw-sleepy"]["energy"]
        print("energy (mA): n2 %s, n3 %s, fw-sleepy %s" % (n2, n3, sleepy))
        assert n2["roles"]["leader"]["mA"] > n3["roles"]["member"]["mA"]
        assert sleepy["roles"]["sleepy"]["mA"] < n3["roles"]["member"]["mA"] / 2
        assert n3["life_h"] is not None and n3["life_h"] > 0
    finally:
        if node is not None and node._thread.is_alive():
            node.stop_waking()
        mesh.close()
        mesh.cleanup()
