"""A small HIL suite: the same tests against real boards and virtual ones.

    pytest --hil-lab hil/labs/virtual-3.toml hil/suite
    pytest --hil-lab my-esp32-lab.toml hil/suite --junitxml=report.xml

Every test brings the mesh to ``joined`` first, so each also runs alone (``-k``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from hil.drivers import GatewayDriver, wait_until
from hil.strategy import MeshStrategy
from hil.target import Board, HilLab

WAIT_S = 20.0
MIN_READINGS = 4


def agreed_leader(boards: dict[str, Board], names: list[str]) -> str | None:
    """The leader every named board reports on its console, if they all report the same."""
    leaders = set()
    for name in names:
        status = boards[name].console.status()
        if status is None or not status.get("leader"):
            return None
        leaders.add(status["leader"])
    return leaders.pop() if len(leaders) == 1 else None


def status_of(boards: dict[str, Board], name: str) -> dict[str, Any]:
    status = boards[name].console.status()
    assert status is not None, "board %s printed no status" % name
    return status


def test_mesh_elects_one_leader_the_gateway_knows(
    strategy: MeshStrategy, boards: dict[str, Board], gateway: GatewayDriver, hil_lab: HilLab
) -> None:
    """All boards join, agree on one leader, and the gateway stores that leader's batches."""
    strategy.transition("joined")
    names = list(boards)
    leader = wait_until(lambda: agreed_leader(boards, names), WAIT_S, "one agreed leader")
    assert leader in names
    mesh = hil_lab.spec.mesh
    wait_until(lambda: gateway.leader(mesh)[0] == leader, WAIT_S, "the gateway to see %s" % leader)


@pytest.mark.hil_feature("power-cycle")
def test_power_loss_of_the_leader_elects_another_and_it_rejoins(
    strategy: MeshStrategy, boards: dict[str, Board], gateway: GatewayDriver, hil_lab: HilLab
) -> None:
    """Power off the leader: the others elect a new one in a higher term; power it back on:
    it rejoins, and every reading it saw confirmed before the power loss is stored."""
    strategy.transition("joined")
    names = list(boards)
    old = wait_until(lambda: agreed_leader(boards, names), WAIT_S, "one agreed leader")
    old_status = status_of(boards, old)
    confirmed = old_status["buffer"]["confirmed"]
    old_term = max(status_of(boards, name)["term"] for name in names)

    strategy[old].transition("off")
    powered_off = time.monotonic()
    survivors = [name for name in names if name != old]
    new = wait_until(
        lambda: (leader := agreed_leader(boards, survivors)) != old and leader,
        WAIT_S,
        "a new leader among %s" % survivors,
    )
    failover_ms = (time.monotonic() - powered_off) * 1000
    assert new in survivors
    assert status_of(boards, new)["term"] > old_term
    mesh = hil_lab.spec.mesh
    wait_until(lambda: gateway.leader(mesh)[0] == new, WAIT_S, "the gateway to see %s" % new)

    strategy[old].transition("joined")  # power back on
    wait_until(lambda: agreed_leader(boards, names), WAIT_S, "one leader for all again")
    assert status_of(boards, old)["boot"] > old_status["boot"]
    stored = gateway.stored(mesh).get((old, old_status["boot"]), [])
    assert stored[:confirmed] == list(range(1, confirmed + 1))
    # A figure, not an assertion: console polling adds up to one status interval.
    print("failover %s -> %s: %.0f ms (seen on the consoles)" % (old, new, failover_ms))


@pytest.mark.hil_feature("gateway")
def test_every_reading_reaches_the_gateway_exactly_once(
    strategy: MeshStrategy, boards: dict[str, Board], gateway: GatewayDriver, hil_lab: HilLab
) -> None:
    """Every reading each board has taken so far is stored once: no gaps, no duplicates."""
    strategy.transition("joined")
    names = list(boards)
    wait_until(lambda: agreed_leader(boards, names), WAIT_S, "one agreed leader")
    # A few readings per board in its current boot (a board just powered on has none yet).
    wait_until(
        lambda: all(status_of(boards, n)["buffer"]["taken"] >= MIN_READINGS for n in names),
        WAIT_S,
        "%d readings on every board" % MIN_READINGS,
    )
    taken = {}
    for name in names:
        status = status_of(boards, name)
        taken[(name, status["boot"])] = status["buffer"]["taken"]
    mesh = hil_lab.spec.mesh

    def all_stored() -> dict[tuple[str, int], list[int]] | None:
        stored = gateway.stored(mesh)
        for key, count in taken.items():
            if stored.get(key, [])[:count] != list(range(1, count + 1)):
                return None
        return stored

    stored = wait_until(all_stored, WAIT_S, "the gateway to store %s" % taken)
    for key, seqs in stored.items():
        assert len(seqs) == len(set(seqs)), "duplicates stored for %s" % (key,)
    print("readings stored once: %s" % {"%s/%d" % key: n for key, n in sorted(taken.items())})


@pytest.mark.hardware
def test_consoles_print_parseable_status_on_real_boards(
    strategy: MeshStrategy, boards: dict[str, Board]
) -> None:
    """Real serial consoles carry status lines intact (a virtual lab skips this)."""
    strategy.transition("booted")
    for name, board in boards.items():
        assert board.console.status() is not None, name
        assert board.console.bad_lines == 0, name
