"""What `meshelect status` and `meshelect agent`'s log tell a user, with real agent processes
in network namespaces: a frozen leader (SIGSTOP) is shown stale, not as a fresh leader, and
fresh again once it runs (SIGCONT); an agent with no gateway says so once, says once when one
is found (a real gateway started later, found by mDNS) and once when it is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from testkit.gateway import GatewayProcess, stored_readings
from testkit.meshlab import MeshUnderTest, agent_config, read_jsonl
from testkit.tools import python_env
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WAIT_S = 20.0  # bounds on waiting for an outcome; nothing asserts on how long it took


def status_rows(state_dir: str) -> dict[str, str]:
    """`meshelect status`'s peer rows, by peer id (the whole row)."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--state-dir", state_dir],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        return {}
    lines = result.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("peer ")), len(lines))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows[line.split()[0]] = line
    return rows


def test_a_frozen_leader_is_shown_stale_and_fresh_again_when_it_runs() -> None:
    mesh = MeshUnderTest(2, "udp", mesh="t-stale", prefix="st-", subnet="10.89.0.0/24")
    try:
        with mesh:
            mesh.start_agent(1, 950)
            mesh.start_agent(2, 500)
            assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S)
            member = mesh.state_dir(2)
            row = status_rows(member)["n1"]
            assert row.endswith(" leader") and "stale" not in row, row
            leader = mesh.procs[1].pid
            os.kill(leader, signal.SIGSTOP)
            try:
                shown = mesh.wait_for(
                    lambda: "stale (was leader)" in status_rows(member).get("n1", ""), WAIT_S
                )
                assert shown, status_rows(member)
                status = mesh.statuses()[2]
                assert status["stale_peers"] == ["n1"]
                suspect_ms = 3 * mesh.heartbeat_ms
                ages = {p["id"]: p["age_ms"] for p in status["peers"]}
                assert ages["n1"] > suspect_ms
                # Meanwhile the member took over: its own view is not the frozen one.
                assert mesh.wait_for(lambda: mesh.statuses()[2]["role"] == "leader", WAIT_S)
            finally:
                os.kill(leader, signal.SIGCONT)
            assert mesh.wait_for(lambda: "stale" not in status_rows(member).get("n1", ""), WAIT_S)
            assert mesh.wait_for(lambda: mesh.statuses()[2]["stale_peers"] == [], WAIT_S)
    finally:
        mesh.cleanup()


def _events(log: Path) -> Counter[str]:
    return Counter(str(record.get("event")) for record in read_jsonl(str(log)))


def test_an_agent_says_once_that_no_gateway_is_found_then_found_then_lost(
    lab_factory: Any, tmp_path: Path
) -> None:
    lab = lab_factory(prefix="gl-", subnet="10.91.0.0/24", hosts=2)
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(agent_config("n1", "t-gwlog", str(state), 900))  # no gateway address
    log = tmp_path / "agent.log"
    with open(log, "a") as stderr:
        lab.run(
            1,
            [sys.executable, "-m", "agent", "agent", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=python_env(),
        )

    def gateway() -> GatewayProcess:
        return GatewayProcess(
            str(tmp_path / "gw.db"),
            "--mdns-interface", lab.address(2),
            udp_port=47471, host=lab.address(2), wrap=lab.command(2, []), mdns=True,
        )  # fmt: skip

    def count(event: str, n: int) -> bool:
        return _events(log)[event] >= n

    assert poll_until(lambda: count("gateway_not_found", 1), WAIT_S), _events(log)
    gw = gateway().start()
    try:
        assert poll_until(lambda: count("gateway_found_mdns", 1), WAIT_S), _events(log)
        # Found means used: the leader's batches reach it.
        stored = poll_until(lambda: stored_readings(gw.db_path, "t-gwlog"), WAIT_S)
        assert stored, _events(log)
    finally:
        gw.stop()  # a clean stop withdraws its advertisement
    assert poll_until(lambda: count("gateway_lost_mdns", 1), WAIT_S), _events(log)
    gw = gateway().start()
    try:
        assert poll_until(lambda: count("gateway_found_mdns", 2), WAIT_S), _events(log)
    finally:
        gw.stop()
    assert poll_until(lambda: count("gateway_lost_mdns", 2), WAIT_S), _events(log)
    events = _events(log)
    # Once each time, not once per tick: the agent ran through many ticks and status writes.
    assert events["gateway_not_found"] == 1, events
    assert (events["gateway_found_mdns"], events["gateway_lost_mdns"]) == (2, 2), events
