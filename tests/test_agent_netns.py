"""Real agent processes, one per network namespace, real multicast and mDNS, the real gateway.

One scenario per transport, kept in one test each so the mesh is built once (seconds, not
minutes, on a 2-core machine): the mesh forms with no addresses configured and elects the best
node; kill -9 of the leader gives a new leader; a partition gives one leader per side and
healing gives one again; (MQTT) a broker restart does not disrupt the election; and every
reading a member saw confirmed is stored by the gateway, and every reading that arrived again
was counted as a duplicate, not stored twice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from testkit.meshlab import MeshUnderTest, delivery_report, parse_log_time

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WAIT_S = 20.0  # bounds on waiting for an outcome; nothing asserts on how long it took


def _leaders(mesh: MeshUnderTest, hosts: list[int]) -> dict[int, Any]:
    statuses = mesh.statuses()
    return {
        h: (statuses[h]["role"], statuses[h]["leader"], statuses[h]["term"])
        for h in hosts
        if h in statuses
    }


def _batch_from(mesh: MeshUnderTest, leader: str) -> bool:
    return any(batch["leader"] == leader for batch in mesh.batches())


def _all_confirmed_stored(
    mesh: MeshUnderTest, killed: dict[tuple[str, int], tuple[int, int]]
) -> dict[str, Any] | None:
    report = delivery_report(mesh, killed)
    return (
        report
        if report["lost"] == 0 and report["in_flight_at_end"] <= 2 * len(mesh.alive()) * 3
        else None
    )


def _arrivals_accounted(mesh: MeshUnderTest) -> bool:
    counters = mesh.gateway_counters()
    stored = sum(len(seqs) for seqs in mesh.stored().values())
    received = counters.get("meshelect_gateway_readings_received_total")
    duplicates = counters.get("meshelect_gateway_dedup_hits_total")
    if received is None or duplicates is None:
        return False  # the gateway did not answer
    return received == stored + duplicates


def _wall(event: dict[str, Any]) -> float:
    return parse_log_time(str(event.get("ts", "")))


def _dump(mesh: MeshUnderTest) -> str:
    lines = []
    for host, status in sorted(mesh.statuses().items()):
        lines.append(
            "status %d: %s %s term %s peers %s drops %s"
            % (
                host,
                status["role"],
                status["leader"],
                status["term"],
                [p["id"] for p in status["peers"]],
                status["drops"],
            )
        )
    lines.extend(str(batch) for batch in mesh.batches()[-5:])
    for host in sorted(mesh.procs):
        lines.append("--- agent %d" % host)
        lines.extend(str(e) for e in mesh.agent_events(host)[-15:])
    return "\n".join(lines)


def test_udp_mesh_elects_fails_over_partitions_and_loses_nothing() -> None:
    mesh = MeshUnderTest(3, "udp", mesh="t-udp", mdns_gateway=True)
    killed: dict[tuple[str, int], tuple[int, int]] = {}
    try:
        with mesh:
            for host, battery in ((1, 950), (2, 700), (3, 450)):
                mesh.start_agent(host, battery)
            # No addresses configured: peers by multicast, the gateway by mDNS.
            assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S), _dump(mesh)
            assert mesh.wait_for(lambda: _batch_from(mesh, "n1"), WAIT_S), _dump(mesh)
            first_term = mesh.statuses()[1]["term"]

            status = mesh.statuses()[1]
            killed[("n1", status["boot"])] = (status["buffer"]["taken"], 0)
            mesh.kill(1)
            assert mesh.wait_for(lambda: mesh.agreed_leader([2, 3]) == "n2", WAIT_S), _dump(mesh)
            assert mesh.statuses()[2]["term"] > first_term
            assert mesh.wait_for(lambda: _batch_from(mesh, "n2"), WAIT_S)

            # n3 alone on one side; n2 keeps the gateway. Each side has its own leader.
            mesh.lab.partition([[2, 4], [3]])
            assert mesh.wait_for(
                lambda: (
                    _leaders(mesh, [2, 3]) and _leaders(mesh, [2, 3])[3][:2] == ("leader", "n3")
                ),
                WAIT_S,
            ), _dump(mesh)
            assert _leaders(mesh, [2])[2][:2] == ("leader", "n2")
            split_term = max(v[2] for v in _leaders(mesh, [2, 3]).values())

            mesh.lab.heal()

            def merged() -> bool:
                # One leader again, the better one, in a term above both sides' terms.
                views = _leaders(mesh, [2, 3])
                return (
                    len(views) == 2
                    and mesh.agreed_leader([2, 3]) == "n2"
                    and all(term > split_term for _, _, term in views.values())
                )

            assert mesh.wait_for(merged, WAIT_S), _dump(mesh)

            # Graceful stop of the leader: it hands over to n3 by name; n3 never has no leader.
            stop_wall = time.time()
            mesh.stop_agent(2)
            assert mesh.procs[2].returncode == 0
            assert mesh.wait_for(lambda: _leaders(mesh, [3]).get(3, ("",))[0] == "leader", WAIT_S)
            changes = [
                e
                for e in mesh.agent_events(3)
                if e.get("event") == "role_changed" and _wall(e) >= stop_wall - 0.05
            ]
            assert changes, _dump(mesh)
            assert [(e["role"], e["leader"], e["reason"]) for e in changes] == [
                ("leader", "n3", "shutdown")
            ]
            handoff = [e for e in mesh.agent_events(2) if e.get("event") == "agent_stopping"]
            assert handoff and handoff[-1]["handoff_to"] == "n3"

            # Everything confirmed to the members is stored, each reading once.
            report = mesh.wait_for(lambda: _all_confirmed_stored(mesh, killed), WAIT_S, step=0.5)
            assert report is not None, delivery_report(mesh, killed)
            assert {node for node, _boot in mesh.stored()} == {"n1", "n2", "n3"}
            print("delivery:", report)

            # Each reading stored once: every reading that arrived in an accepted batch was
            # stored or recognised as already stored (sent again after a leader change). With
            # the last agent stopped nothing more arrives, so the two figures can be compared.
            mesh.stop_agent(3)
            assert mesh.wait_for(lambda: _arrivals_accounted(mesh), WAIT_S, step=0.5), (
                mesh.gateway_counters(),
                delivery_report(mesh, killed),
            )
    finally:
        mesh.cleanup()


@pytest.mark.broker
def test_mqtt_mesh_survives_broker_restart_and_fails_over() -> None:
    mesh = MeshUnderTest(3, "mqtt", mesh="t-mqtt")
    killed: dict[tuple[str, int], tuple[int, int]] = {}
    try:
        with mesh:
            for host, battery in ((1, 950), (2, 700), (3, 450)):
                mesh.start_agent(host, battery)
            assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S), _dump(mesh)
            assert mesh.wait_for(lambda: _batch_from(mesh, "n1"), WAIT_S), _dump(mesh)
            before = {h: s["stats"]["terms_started"] for h, s in mesh.statuses().items()}
            term = mesh.statuses()[1]["term"]

            mesh.broker.restart()
            # Everyone reconnects (paho's backoff) and keeps the same leader and term.
            assert mesh.wait_for(
                lambda: (
                    all(
                        s["transport"]["connected"] and s["transport"]["disconnects"] >= 1
                        for s in mesh.statuses().values()
                    )
                    and len(mesh.statuses()) == 3
                ),
                WAIT_S,
            ), _dump(mesh)
            time.sleep(2.0)  # a few heartbeat rounds after the return: would show a disruption
            after = mesh.statuses()
            assert {h: s["stats"]["terms_started"] for h, s in after.items()} == before, _dump(mesh)
            assert {s["leader"] for s in after.values()} == {"n1"}
            assert {s["term"] for s in after.values()} == {term}

            status = after[1]
            killed[("n1", status["boot"])] = (status["buffer"]["taken"], 0)
            mesh.kill(1)
            assert mesh.wait_for(lambda: mesh.agreed_leader([2, 3]) == "n2", WAIT_S), _dump(mesh)
            report = mesh.wait_for(lambda: _all_confirmed_stored(mesh, killed), WAIT_S, step=0.5)
            assert report is not None, delivery_report(mesh, killed)
            print("delivery:", report)
    finally:
        mesh.cleanup()
