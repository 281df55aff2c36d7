"""Two leaders meet when a partition heals: exactly one remains, the better one.

Hysteresis (the margin) protects a sitting leader from a better follower; it does not apply
between two leaders: one of them must go anyway, and the better one is what an election of
the whole mesh would pick. The better leader takes over in a term above both sides (it claims
one, or already holds the higher term, which the other side follows at once).
"""

from __future__ import annotations

import pytest

from agent.core.mesh import Mesh
from agent.core.node import ROLE_LEADER, Config


def _view(mesh: Mesh) -> dict[str, tuple[int, int, str | None]]:
    return {s.id: (s.node.role, s.node.term, s.node.leader) for s in mesh.order}


@pytest.mark.parametrize("bumped", ["better", "worse", "none"])
@pytest.mark.parametrize("better_side", ["a", "b"])
def test_the_better_leader_wins_inside_the_margin_whatever_the_terms(
    bumped: str, better_side: str
) -> None:
    mesh = Mesh(Config(heartbeat_ms=250), seed=5)
    # Scores 1000 and 910: 90 points apart, inside the 150 margin. Members score below both.
    best, other = ("a", "b") if better_side == "a" else ("b", "a")
    mesh.add(best, battery=1000, link=1000)
    mesh.add(other, battery=850, link=1000)
    for member in ("a1", "a2", "b1"):
        mesh.add(member, battery=300, link=1000)
    for node_id in ("a", "a1", "a2", "b", "b1"):
        mesh.start(node_id)
    mesh.run_until(3000)
    mesh.partition([["a", "a1", "a2"], ["b", "b1"]])
    mesh.run_until(6000)
    if bumped != "none":  # one side elects again: its term is the higher one at the heal
        leader = best if bumped == "better" else other
        mesh.crash(leader)
        mesh.run_until(8000)
        mesh.start(leader)
        mesh.run_until(10000)
    view = _view(mesh)
    assert view[best][0] == ROLE_LEADER and view[other][0] == ROLE_LEADER, view
    top = max(term for _, term, _ in view.values())
    mesh.heal()
    mesh.run_until(mesh.now + 5000)
    view = _view(mesh)
    assert [n for n, v in view.items() if v[0] == ROLE_LEADER] == [best], view
    assert {leader for _, _, leader in view.values()} == {best}, view
    assert {term for _, term, _ in view.values()} == {view[best][1]} and view[best][1] >= top
