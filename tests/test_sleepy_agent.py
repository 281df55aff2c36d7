"""The Pi agent's sleepy mode (``[sleep]`` in its TOML): three Pi agents and the real gateway
in namespaces, the third one sleepy.

The sleepy agent has the best battery of the mesh but never leads. Between wakes it dozes
(agent/runtime.py): the process stays, its node is down and its radio notionally off. While it
dozes the gateway shows it sleeping (the member row's ``sleep_ms``, ``next_wake_ms`` and
``last_seen_ms``: what the dashboard's role column reads) and raises no silent alert. The
leader is killed (kill -9) at the start of one doze; at its next wake the sleepy agent finds
the new leader and its readings go on. At the end every reading it took is stored once or
still held (in its buffer and its journal): 0 lost, 0 duplicated.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from agent.journal import ReadingJournal
from agent.status import read_status
from testkit.meshlab import MeshUnderTest, parse_log_time

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MESH = "sleepy-pi"
SLEEPY = 3  # its host; its node id is "n3"
# Longer than the dashboard's "heard lately" (5 s, gateway/static/app.js): only then does it
# show a member as sleeping rather than "sleepy, awake".
SLEEP_MS = 7000
HEARD_LATELY_MS = 5000
SILENT_S = 3  # the gateway's --silent-after: a sleepy member may go 2 x 7 s + 3 s unheard
ENERGY = "[energy]\nreport_ms = 1000\n"
SLEEP = "[sleep]\ninterval_ms = %d\nlisten_ms = 2000\nconfirm_ms = 3000\n" % SLEEP_MS


def dozes(mesh: MeshUnderTest) -> list[float]:
    """When the sleepy agent began each doze (its log's time, seconds since the epoch)."""
    return [
        parse_log_time(e.get("ts", ""))
        for e in mesh.agent_events(SLEEPY)
        if e.get("event") == "dozing"
    ]


def next_doze(mesh: MeshUnderTest, timeout: float) -> float:
    """Wait for the sleepy agent to begin its next doze; return when it began."""
    seen = len(dozes(mesh))
    assert mesh.wait_for(lambda: len(dozes(mesh)) > seen, timeout), mesh.agent_events(SLEEPY)
    return dozes(mesh)[-1]


def sleepy_status(mesh: MeshUnderTest) -> dict[str, Any]:
    status = read_status(mesh.state_dir(SLEEPY))
    assert status is not None
    return status


def test_sleepy_agent_across_a_failover_while_it_dozes() -> None:
    mesh = MeshUnderTest(
        3,
        "udp",
        mesh=MESH,
        prefix="sa-",
        subnet="10.96.0.0/24",
        gateway_args=("--silent-after", "%ds" % SILENT_S),
        sample_ms=1000,
    )
    try:
        mesh.open()
        for host, battery in ((1, 950), (2, 800)):
            mesh.start_agent(host, battery, extra=ENERGY)
        assert mesh.wait_for(lambda: mesh.agreed_leader([1, 2]) == "n1", 30)
        # The best battery of the mesh: it would lead, were it not sleepy.
        mesh.start_agent(SLEEPY, 1000, extra=ENERGY + SLEEP)

        # A few wakes with n1 leading; the gateway learns its wake interval.
        assert mesh.wait_for(lambda: len(dozes(mesh)) >= 3, 60), mesh.agent_events(SLEEPY)
        assert mesh.wait_for(
            lambda: mesh.members().get("n3", {}).get("sleep_ms") == SLEEP_MS, 20
        ), mesh.members()

        # Deep in a doze the gateway shows it sleeping, as the dashboard's role column reads
        # it: a sleepy member not heard lately, with its next wake ahead.
        began = next_doze(mesh, 30)
        time.sleep(max(0.0, began + (HEARD_LATELY_MS + 500) / 1000 - time.time()))
        row = mesh.members()["n3"]
        now_ms = time.time() * 1000
        assert time.time() < began + SLEEP_MS / 1000, "the check came after the wake"
        assert row["sleep_ms"] == SLEEP_MS and row["flags"] & 32, row  # F_SLEEPY
        assert now_ms - row["last_seen_ms"] >= HEARD_LATELY_MS, row
        assert row["next_wake_ms"] == row["last_seen_ms"] + SLEEP_MS, row

        # Kill the leader at the start of a doze: the sleepy agent hears none of the failover.
        taken_at_kill = sleepy_status(mesh)["buffer"]["taken"]
        began = next_doze(mesh, 30)
        mesh.kill(1)
        assert time.time() < began + SLEEP_MS / 1000, "the kill came after the wake"
        assert mesh.wait_for(lambda: mesh.agreed_leader([2]) == "n2", 30)
        # It wakes, finds n2 and goes on: readings taken after the kill are stored.
        kill_dozes = len(dozes(mesh))
        assert mesh.wait_for(lambda: len(dozes(mesh)) >= kill_dozes + 3, 60)
        boot = sleepy_status(mesh)["boot"]
        assert mesh.wait_for(
            lambda: max(mesh.stored().get(("n3", boot), {0})) > taken_at_kill + 2, 30
        ), (mesh.stored().get(("n3", boot)), taken_at_kill)
        # Asleep longer than the gateway's silent time, across a leader change: never silent.
        assert mesh.silent_alerts("n3") == []
        row = mesh.members()["n3"]
        assert row["sleep_ms"] == SLEEP_MS and row["flags"] & 32, row

        # Stopped while it dozes, it takes no more readings (they could only wait in its
        # journal for a next boot); its last status counts them, its journal keeps the held.
        next_doze(mesh, 30)
        taken = sleepy_status(mesh)["buffer"]["taken"]
        mesh.stop_agent(SLEEPY)
        status = sleepy_status(mesh)
        buf = status["buffer"]
        assert buf["taken"] == taken, buf
        held: set[int] = set()
        if buf["depth"]:
            held = set(range(buf["unconfirmed_from"], taken + 1))
        assert len(held) == buf["depth"], buf
        journal = ReadingJournal.recover(mesh.state_dir(SLEEPY), boot + 1, 1 << 20)
        journaled = {seq for b, seq, *_ in journal.items if b == boot}
        assert held <= journaled, (held, journaled)

        # Exactly once: every reading it took is stored once or still held by it.
        stored = mesh.stored().get(("n3", boot), set())
        lost = sorted(set(range(1, taken + 1)) - stored - held)
        duplicated = mesh.conflicts("n3")
        print(
            "sleepy agent: %d dozes, taken %d, stored %d, held %d, lost %d, duplicated %d"
            % (len(dozes(mesh)), taken, len(stored), len(held), len(lost), duplicated)
        )
        assert lost == [] and duplicated == 0
        assert stored <= set(range(1, taken + 1))
        assert {b for n, b in mesh.stored() if n == "n3"} == {boot}  # one boot throughout

        # Never led: no election names it, and it never was a candidate or leader.
        elections = mesh.gateway_json("/api/elections?mesh=%s" % MESH)
        assert elections and all(e["leader"] != "n3" for e in elections)
        roles = {
            e.get("role") for e in mesh.agent_events(SLEEPY) if e.get("event") == "role_changed"
        }
        assert roles <= {"follower", "down"}, roles
        assert status["stats"]["terms_started"] == 0

        # Energy: its mean current as a sleepy member is far below n2's as an awake member.
        view = mesh.members()
        sleepy, member = view["n3"]["energy"], view["n2"]["energy"]
        print("energy (mA): n2 %s, n3 %s" % (member, sleepy))
        assert sleepy["roles"]["sleepy"]["mA"] < member["roles"]["member"]["mA"] / 2
    finally:
        mesh.close()
        mesh.cleanup()
