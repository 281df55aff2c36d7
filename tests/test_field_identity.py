"""Wiped nodes and forged acknowledgements with real processes (issue 9, items 2 and 4).

Real agents in network namespaces, the real gateway on SQLite, and a forger process that holds
the mesh key. A wiped agent (its state dir deleted) comes back with a boot id above its old
ones when its clock is valid, and every new reading is stored; without a valid clock it reuses
boot 1, and the gateway stores those readings apart instead of dropping them as duplicates.
Forged READINGS_ACK and BATCH_ACK frames free and confirm nothing, are counted, and nothing is
lost. The firmware's half (a flashed board on the unix port) is in tests/test_firmware_node.py.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from typing import Any

import pytest

from agent.runtime import NO_CLOCK_ENV
from agent.status import read_status
from testkit.meshlab import MeshUnderTest, boot_progress, delivery_report
from testkit.tools import python_env

pytestmark = [pytest.mark.netns, pytest.mark.slow]

KEY = "6669656c642d6964656e74697479"  # hex of "field-identity"


def query(db: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def start_pair(mesh: MeshUnderTest) -> None:
    """n1 leads (started first, alone: term 1), n2 follows."""
    mesh.start_agent(1, 950)
    assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", 20)
    mesh.start_agent(2, 500)
    assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", 20)


def confirmed(mesh: MeshUnderTest, host: int, boot: int, at_least: int) -> int:
    """Wait until ``host`` in ``boot`` saw ``at_least`` readings confirmed; return how many."""

    def enough() -> int | None:
        b, _, done = boot_progress(mesh.state_dir(host))
        return done if b == boot and done >= at_least else None

    done = mesh.wait_for(enough, 40)
    assert done, read_status(mesh.state_dir(host))
    return int(done)


def test_a_wiped_agent_with_a_valid_clock_comes_back_above_its_old_boots() -> None:
    with MeshUnderTest(2, mesh="t-wipe-clock", prefix="wc-", subnet="10.96.1.0/24") as mesh:
        start_pair(mesh)
        old_boot = int(read_status(mesh.state_dir(2))["boot"])  # type: ignore[index]
        confirmed(mesh, 2, old_boot, 10)
        mesh.stop_agent(2)
        old = mesh.stored()[("n2", old_boot)]
        shutil.rmtree(mesh.state_dir(2))  # a new SD card
        mesh.start_agent(2, 500)
        new_boot = mesh.wait_for(lambda: (read_status(mesh.state_dir(2)) or {}).get("boot"), 20)
        assert new_boot > old_boot
        done = confirmed(mesh, 2, new_boot, 15)
        stored = mesh.stored()
        assert set(range(1, done + 1)) <= stored[("n2", new_boot)]
        # The first life's readings are all still there (and what the leader still held of
        # it when n2 stopped arrived after).
        assert old <= stored[("n2", old_boot)]
        counters = mesh.gateway_counters()
        assert counters["meshelect_gateway_boot_reuse_total"] == 0
        report = delivery_report(mesh, {})
        print("wipe with clock: boots %d -> %d, %s" % (old_boot, new_boot, report))
        assert report["lost"] == 0
    mesh.cleanup()


def test_a_wiped_agent_without_a_clock_reuses_boot_1_and_the_gateway_keeps_it_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(NO_CLOCK_ENV, "1")  # the agents' children inherit it
    with MeshUnderTest(2, mesh="t-wipe-noclock", prefix="wn-", subnet="10.96.2.0/24") as mesh:
        start_pair(mesh)
        first_done = confirmed(mesh, 2, 1, 10)
        mesh.stop_agent(2)
        mesh.stop_agent(1)
        first = mesh.stored()[("n2", 1)]
        assert set(range(1, first_done + 1)) <= first
        shutil.rmtree(mesh.state_dir(2))  # wiped, and no clock: boot 1 again
        start_pair(mesh)  # n1 keeps its state (boot 2); its peers' replay tables are new
        assert read_status(mesh.state_dir(2))["boot"] == 1  # type: ignore[index]
        done = confirmed(mesh, 2, 1, len(first) + 10)
        stored = mesh.stored()[("n2", 1)]
        apart = {
            row[0]
            for row in query(
                mesh.gateway_db,
                "SELECT seq FROM reading_conflicts WHERE mesh = ? AND node = 'n2' AND boot = 1",
                mesh.mesh,
            )
        }
        new = apart | (stored - first)
        lost = set(range(1, done + 1)) - new
        counters = mesh.gateway_counters()
        print(
            "wipe without clock: first life %d stored; second life %d confirmed, %d stored "
            "apart (reused ids), %d stored as new, %d lost; gateway dedup hits %d"
            % (
                len(first),
                done,
                len(apart),
                len(stored - first),
                len(lost),
                counters.get("meshelect_gateway_dedup_hits_total", -1),
            )
        )
        assert not lost
        assert len(apart) >= len(first) - 2  # the reused ids (a few may not have been reused)
        assert counters["meshelect_gateway_boot_reuse_total"] == len(apart)
        alerts = query(
            mesh.gateway_db,
            "SELECT node FROM alerts WHERE kind = 'boot_reuse' AND mesh = ?",
            mesh.mesh,
        )
        assert alerts == [("n2",)]
        assert any(e.get("event") == "boot_ids_may_repeat" for e in mesh.agent_events(2))
    mesh.cleanup()


FORGER = r"""
import socket, sys, time
from agent import strict_cbor
from agent.core.messages import ACK_OK, BATCH_ACK, READINGS_ACK, Msg
from agent.core.wire import Codec

mesh, key, leader_ip, term, seconds = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
members = [(name, ip, int(boot)) for name, ip, boot in (m.split(",") for m in sys.argv[6:])]
codec = Codec(mesh, key, strict_cbor.dumps, strict_cbor.loads, boot=7)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = {"readings_ack": 0, "batch_ack": 0}
end = time.monotonic() + seconds
guess = 0
while time.monotonic() < end:
    for name, ip, boot in members:
        ack = Msg(READINGS_ACK, "forger", term=term, target=name, body=[[boot, 0, 0xFFFFFFFF]])
        sock.sendto(codec.encode(ack), (ip, 47470))
        sent["readings_ack"] += 1
    for _ in range(20):  # batch ids as a leader without random bits would number them
        guess += 1
        ack = Msg(BATCH_ACK, "gateway", term=term, target="n1", body=[guess % 200, ACK_OK, term])
        sock.sendto(codec.encode(ack), (leader_ip, 47470))
        sent["batch_ack"] += 1
    time.sleep(0.05)
print(sent["readings_ack"], sent["batch_ack"])
"""


def test_forged_acks_from_a_key_holder_free_and_confirm_nothing_and_nothing_is_lost() -> None:
    with MeshUnderTest(
        3, mesh="t-forge", prefix="fg-", subnet="10.96.3.0/24", mesh_key=KEY
    ) as mesh:
        mesh.start_agent(1, 950)
        assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", 20)
        mesh.start_agent(2, 600)
        mesh.start_agent(3, 500)
        assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", 20)
        mesh.wait_for(lambda: len(mesh.batches()) >= 2, 20)
        # The gateway goes away: from now on no real ack comes, only the forger's.
        mesh.lab.partition([[1, 2, 3], [4]])
        time.sleep(1.5)  # the real acks already on their way arrive (not an assertion)
        before = mesh.wait_for(lambda: len(mesh.statuses()) == 3 and mesh.statuses(), 5)
        term = before[1]["term"]
        members = ["n%d,%s,%d" % (h, mesh.lab.address(h), before[h]["boot"]) for h in (1, 2, 3)]
        forger = mesh.lab.exec(
            3,
            [
                sys.executable,
                "-c",
                FORGER,
                mesh.mesh,
                KEY,
                mesh.lab.address(1),
                str(term),
                "4",
                *members,
            ],
            timeout=60,
            env=python_env(),
        )
        assert forger.returncode == 0, forger.stderr
        sent_readings_acks, sent_batch_acks = map(int, forger.stdout.split())
        after = mesh.statuses()
        for host in (2, 3):  # members: nothing freed, every forged ack counted
            assert after[host]["buffer"]["confirmed"] == before[host]["buffer"]["confirmed"]
            assert after[host]["buffer"]["foreign_acks"] > 0
        lead = after[1]["collector"]
        assert lead["batches_acked"] == before[1]["collector"]["batches_acked"]
        assert lead["stale_acks"] - before[1]["collector"]["stale_acks"] > 0
        assert after[1]["buffer"]["confirmed"] == before[1]["buffer"]["confirmed"]
        print(
            "forger sent %d READINGS_ACK and %d BATCH_ACK; members counted %s foreign acks, "
            "the leader %d stale acks"
            % (
                sent_readings_acks,
                sent_batch_acks,
                [after[h]["buffer"]["foreign_acks"] for h in (2, 3)],
                lead["stale_acks"],
            )
        )
        mesh.lab.heal()
        # Everything reaches the gateway once it is back: nothing was lost to the forgery.
        for host in (1, 2, 3):
            boot = after[host]["boot"]
            taken = after[host]["buffer"]["taken"]
            mesh.wait_for(
                lambda h=host, b=boot, t=taken: boot_progress(mesh.state_dir(h))[2] >= t, 40
            )
        report = delivery_report(mesh, {})
        print("after the forgery: %s" % report)
        assert report["lost"] == 0
        stored = mesh.stored()
        for host in (1, 2, 3):
            key = ("n%d" % host, after[host]["boot"])
            assert set(range(1, after[host]["buffer"]["taken"] + 1)) <= stored[key]
    mesh.cleanup()
