"""The HIL suite: the same tests against a bench of real boards and a virtual lab.

    pytest --lg-env hil/envs/virtual-3.yaml hil/suite
    pytest --lg-env my-bench.yaml hil/suite --junitxml=report.xml

Every test brings the mesh to ``joined`` first, so each also runs alone (``-k``). Tests that
need something a lab may lack name it with labgrid's ``lg_feature`` marker (the environment's
``features:``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from hil.drivers.common import wait_until
from hil.drivers.gateway import MeshGatewayDriver
from hil.mesh import Mesh

WAIT_S = 20.0
MIN_READINGS = 4
# After a restart the data must flow again within 3 s of the new leader's election (the
# field requirement); this bound leaves room for the election and a slow bench on top of that.
STORED_AFTER_RESTART_S = 10.0


def agreed_leader(mesh: Mesh, names: list[str]) -> str | None:
    """The leader every named board reports on its console, if they all report the same."""
    leaders = set()
    for name in names:
        status = mesh[name].console.status()
        if status is None or not status.get("leader"):
            return None
        leaders.add(status["leader"])
    return leaders.pop() if len(leaders) == 1 else None


def status_of(mesh: Mesh, name: str) -> dict[str, Any]:
    status = mesh[name].console.status()
    assert status is not None, "board %s printed no status" % name
    return status


def taken_now(mesh: Mesh, at_least: int = MIN_READINGS) -> dict[tuple[str, int], int]:
    """(board, boot) -> readings taken so far in this boot, once every board has a few."""
    wait_until(
        lambda: all(status_of(mesh, n)["buffer"]["taken"] >= at_least for n in mesh.names),
        WAIT_S,
        "%d readings on every board" % at_least,
    )
    taken = {}
    for name in mesh.names:
        status = status_of(mesh, name)
        taken[(name, status["boot"])] = status["buffer"]["taken"]
    return taken


def wait_stored_once(
    gateway: MeshGatewayDriver,
    mesh: Mesh,
    taken: dict[tuple[str, int], int],
    timeout: float = WAIT_S,
) -> dict[tuple[str, int], list[int]]:
    """Wait until every reading in ``taken`` is stored; then check nothing is stored twice."""

    def all_stored() -> dict[tuple[str, int], list[int]] | None:
        stored = gateway.stored(mesh.mesh_name)
        for key, count in taken.items():
            if stored.get(key, [])[:count] != list(range(1, count + 1)):
                return None
        return stored

    stored: dict[tuple[str, int], list[int]] = wait_until(
        all_stored, timeout, "the gateway to store %s" % taken
    )
    for key, seqs in stored.items():
        assert len(seqs) == len(set(seqs)), "duplicates stored for %s" % (key,)
    return stored


def test_mesh_elects_one_leader_the_gateway_knows(mesh: Mesh, gateway: MeshGatewayDriver) -> None:
    """All boards join, agree on one leader, and the gateway stores that leader's batches."""
    mesh.transition("joined")
    leader = wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader")
    assert leader in mesh.names
    wait_until(
        lambda: gateway.leader(mesh.mesh_name)[0] == leader,
        WAIT_S,
        "the gateway to see %s" % leader,
    )


@pytest.mark.lg_feature("power-cycle")
def test_power_loss_of_the_leader_elects_another_and_it_rejoins(
    mesh: Mesh, gateway: MeshGatewayDriver
) -> None:
    """Power off the leader: the others elect a new one in a higher term; power it back on:
    it rejoins, and every reading it saw confirmed before the power loss is stored."""
    mesh.transition("joined")
    names = mesh.names
    old = wait_until(lambda: agreed_leader(mesh, names), WAIT_S, "one agreed leader")
    old_status = status_of(mesh, old)
    confirmed = old_status["buffer"]["confirmed"]
    old_term = max(status_of(mesh, name)["term"] for name in names)

    mesh[old].transition("off")
    powered_off = time.monotonic()
    survivors = [name for name in names if name != old]
    new = wait_until(
        lambda: (leader := agreed_leader(mesh, survivors)) != old and leader,
        WAIT_S,
        "a new leader among %s" % survivors,
    )
    failover_ms = (time.monotonic() - powered_off) * 1000
    assert new in survivors
    assert status_of(mesh, new)["term"] > old_term
    wait_until(
        lambda: gateway.leader(mesh.mesh_name)[0] == new, WAIT_S, "the gateway to see %s" % new
    )

    mesh[old].transition("joined")  # power back on
    wait_until(lambda: agreed_leader(mesh, names), WAIT_S, "one leader for all again")
    assert status_of(mesh, old)["boot"] > old_status["boot"]
    stored = gateway.stored(mesh.mesh_name).get((old, old_status["boot"]), [])
    assert stored[:confirmed] == list(range(1, confirmed + 1))
    # A figure, not an assertion: console polling adds up to one status interval.
    print("failover %s -> %s: %.0f ms (seen on the consoles)" % (old, new, failover_ms))


@pytest.mark.lg_feature("gateway")
def test_every_reading_reaches_the_gateway_exactly_once(
    mesh: Mesh, gateway: MeshGatewayDriver
) -> None:
    """Every reading each board has taken so far is stored once: no gaps, no duplicates."""
    mesh.transition("joined")
    wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader")
    taken = taken_now(mesh)
    wait_stored_once(gateway, mesh, taken)
    print("readings stored once: %s" % {"%s/%d" % key: n for key, n in sorted(taken.items())})


@pytest.mark.lg_feature(["reflash", "gateway"])
def test_a_board_reflashed_mid_run_has_every_new_reading_stored(
    mesh: Mesh, gateway: MeshGatewayDriver
) -> None:
    """Erase and reflash one board while the mesh runs (its boot counter file is gone): it
    rejoins, and every reading it takes afterwards reaches the gateway.

    New readings are told from old ones by their boot and by when the gateway received them
    (its own clock): with a valid clock the new boot is above the old ones; without one it
    may reuse old (boot, seq) pairs, which the gateway then stores apart (docs/security.md)."""
    mesh.transition("joined")
    leader = wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader")
    victim = next(name for name in reversed(mesh.names) if name != leader)
    wait_stored_once(gateway, mesh, taken_now(mesh))
    mark = max(int(row["received_ms"]) for row in gateway.readings(mesh.mesh_name, victim))

    mesh[victim].reflash()
    mesh[victim].transition("joined")
    wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader again")
    boot = status_of(mesh, victim)["boot"]
    count = taken_now(mesh)[(victim, boot)]

    def new_stored() -> bool:
        seqs = {
            int(row["seq"])
            for row in gateway.readings(mesh.mesh_name, victim)
            if int(row["received_ms"]) > mark and int(row["boot"]) == boot
        }
        return seqs >= set(range(1, count + 1))

    wait_until(new_stored, STORED_AFTER_RESTART_S, "%s's %d new readings" % (victim, count))


@pytest.mark.lg_feature(["mqtt", "gateway"])
def test_a_broker_restart_loses_no_reading(
    mesh: Mesh, gateway: MeshGatewayDriver, broker: Any
) -> None:
    """Restart the MQTT broker under a running mesh: the mesh and the gateway reconnect, and
    every reading taken before and after is stored once."""
    mesh.transition("joined")
    wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader")
    before = taken_now(mesh)
    broker.restart()
    wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader after")
    after = {key: count + MIN_READINGS for key, count in before.items()}
    wait_until(
        lambda: all(
            status_of(mesh, name)["buffer"]["taken"] >= after[(name, status_of(mesh, name)["boot"])]
            for name in mesh.names
        ),
        WAIT_S,
        "more readings after the restart",
    )
    wait_stored_once(gateway, mesh, after)


@pytest.mark.lg_feature("pi")
def test_a_pi_runs_the_agent_as_a_service_and_its_readings_arrive(
    mesh: Mesh, gateway: MeshGatewayDriver
) -> None:
    """Each Pi gets the agent's config and the systemd unit over SSH; the service runs, joins
    the boards' mesh, and its readings reach the gateway (its node id is its target's name)."""
    assert mesh.agents, "the environment declares the pi feature but has no MeshAgentDriver"
    mesh.transition("joined")
    for name, target in mesh.agents.items():
        agent = target.get_driver("MeshAgentDriver")
        agent.install()
        wait_until(agent.active, WAIT_S, "the agent service on %s" % name)

        def arrived(node: str = name) -> bool:
            return bool(gateway.readings(mesh.mesh_name, node))

        wait_until(arrived, WAIT_S, "readings of %s at the gateway" % name)


@pytest.mark.lg_feature("serial-console")
def test_consoles_print_parseable_status_on_real_boards(mesh: Mesh) -> None:
    """Real serial consoles carry status lines intact (a virtual lab has no serial port)."""
    mesh.transition("booted")
    for name in mesh.names:
        assert mesh[name].console.status() is not None, name
        assert mesh[name].console.bad_lines == 0, name


@pytest.mark.lg_feature(["power-cycle", "gateway"])
def test_readings_exactly_once_across_a_power_cut_of_every_board(
    mesh: Mesh, gateway: MeshGatewayDriver
) -> None:
    """Cut the power of every board at once, restore it: a leader is elected again and every
    reading taken before and after reaches the gateway, once.

    The mesh first lives through a leader change, as any site that has run a while has: the
    gateway then knows a term above the first one."""
    mesh.transition("joined")
    leader = wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader")
    mesh[leader].transition("off")
    survivors = [name for name in mesh.names if name != leader]
    wait_until(lambda: agreed_leader(mesh, survivors), WAIT_S, "a leader after a failover")
    mesh.transition("joined")
    before = taken_now(mesh)
    wait_stored_once(gateway, mesh, before)
    term_before = gateway.leader(mesh.mesh_name)[1]

    mesh.transition("off")  # every board at once: a site power cut
    mesh.transition("joined")
    wait_until(lambda: agreed_leader(mesh, mesh.names), WAIT_S, "one agreed leader again")
    after = taken_now(mesh)
    assert not set(after) & set(before), "every board booted again: new boot numbers"
    print(
        "gateway term before the cut: %d, terms on the consoles after: %s"
        % (term_before, {n: status_of(mesh, n)["term"] for n in mesh.names})
    )
    wait_stored_once(gateway, mesh, {**before, **after}, STORED_AFTER_RESTART_S)
