"""A whole-site power cut: every agent killed at once (kill -9), with or without the gateway,
restarted with its state dir kept or wiped; real agents in namespaces, the real gateway.

Before the cut the mesh has moved its term past 1 (a leader was killed), so the gateway's fence
is above anything a mesh that forgot its terms would claim. After the restart a leader's batch
must be stored again (the kept state dir gives the node its highest term back, so its first
claim is above the fence; a wiped one learns the gateway's term from the FENCED answer and leads
above it at once), and, with state kept, every reading confirmed to an agent is stored once.
Readings held in RAM by a killed agent whose state dir was wiped die with it (counted apart).
"""

from __future__ import annotations

import shutil

import pytest

from testkit.meshlab import MeshUnderTest, boot_progress, delivery_report
from tests.test_agent_netns import _arrivals_accounted, _dump

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WAIT_S = 30.0  # bounds on waiting; nothing asserts on how long it took
HOSTS = [1, 2, 3, 4]


def _fence(mesh: MeshUnderTest) -> int:
    return max((b["term"] for b in mesh.batches()), default=0)


@pytest.mark.parametrize(
    ("transport", "wipe", "gateway_too"),
    [
        ("udp", False, False),
        ("udp", True, False),
        ("udp", False, True),
        ("udp", True, True),
        ("mqtt", False, False),
        ("mqtt", True, True),
    ],
    ids=[
        "udp-state-kept",
        "udp-state-wiped",
        "udp-state-kept-gateway-too",
        "udp-state-wiped-gateway-too",
        "mqtt-state-kept",
        "mqtt-state-wiped-gateway-too",
    ],
)
def test_whole_site_power_cut_then_readings_flow_again(
    transport: str, wipe: bool, gateway_too: bool
) -> None:
    mesh = MeshUnderTest(4, transport, mesh="t-cut", sample_ms=300)
    killed: dict[tuple[str, int], tuple[int, int]] = {}
    try:
        with mesh:
            for host in HOSTS:
                mesh.start_agent(host, 1000 - 100 * host)
            assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S), _dump(mesh)
            assert mesh.wait_for(lambda: _fence(mesh) >= 1, WAIT_S), _dump(mesh)
            # Move the term on: the leader dies, n2 leads, n1 comes back and follows.
            killed[("n1", boot_progress(mesh.state_dir(1))[0])] = boot_progress(mesh.state_dir(1))[
                1:
            ]
            mesh.kill(1)
            assert mesh.wait_for(lambda: mesh.agreed_leader([2, 3, 4]) == "n2", WAIT_S)
            assert mesh.wait_for(lambda: _fence(mesh) >= 2, WAIT_S), _dump(mesh)
            mesh.start_agent(1, 900)
            assert mesh.wait_for(lambda: mesh.agreed_leader() is not None, WAIT_S)
            fence = mesh.wait_for(lambda: _fence(mesh) if _fence(mesh) >= 2 else None, WAIT_S)

            # The power cut.
            for host in HOSTS:
                boot, taken, confirmed = boot_progress(mesh.state_dir(host))
                killed[(mesh.node_id(host), boot)] = (taken, confirmed)
                mesh.kill(host)
            if gateway_too:
                assert mesh.gateway is not None
                mesh.gateway.kill()
                mesh.gateway.start()
            if wipe:
                for host in HOSTS:
                    shutil.rmtree(mesh.state_dir(host))
            for host in HOSTS:
                mesh.start_agent(host, 1000 - 100 * host)

            # A leader's batch above the old fence is stored again; fencing kept its meaning
            # (no batch below the fence was accepted after it).
            assert mesh.wait_for(lambda: _fence(mesh) > fence, WAIT_S), _dump(mesh)
            terms = [b["term"] for b in mesh.batches()]
            assert terms == sorted(terms), terms
            if not wipe:
                report = mesh.wait_for(
                    lambda: (
                        (r := delivery_report(mesh, killed))["lost"] == 0
                        and r["lost_with_kill"] == 0
                        and r["in_flight_at_end"] <= 4 * 6
                        and r
                    ),
                    WAIT_S,
                    step=0.5,
                )
                assert report, delivery_report(mesh, killed)
                print("whole-site power cut:", report)
            if not gateway_too:  # (a restarted gateway's counters start again at 0)
                # Every reading that arrived is stored once or counted as a duplicate.
                assert mesh.wait_for(lambda: _arrivals_accounted(mesh), WAIT_S, step=0.5)
            assert delivery_report(mesh, killed)["lost"] == 0
    finally:
        mesh.cleanup()
