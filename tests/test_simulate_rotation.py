"""The simulator's model of meshelect's leader choice against the real core on the in-memory mesh.

For random battery and link states, real ``Node`` objects on ``agent.core.mesh.Mesh`` elect a
leader, hand over when the leader's own power changes, and fail over when it crashes; the
simulator's ``Rule`` must name the same leader each time, with the hysteresis margin and
low-battery rule and without them.
"""

from __future__ import annotations

import random

import pytest

from agent.core.mesh import Mesh
from agent.core.node import ROLE_LEADER, Config
from tools.simulate.field import node_id
from tools.simulate.rotation import Rule

HEARTBEAT_MS = 250
SETTLE_MS = 12 * HEARTBEAT_MS


def settled_leader(mesh: Mesh) -> str | None:
    """The leader every live node follows, if they all agree and it leads; else None."""
    live = mesh.live()
    leaders = {sim.node.leader for sim in live}
    if len(leaders) != 1:
        return None
    (leader,) = leaders
    if leader is None or mesh.nodes[leader].node.role != ROLE_LEADER:
        return None
    return leader


def settle(mesh: Mesh) -> str:
    mesh.run_until(mesh.now + SETTLE_MS)
    leader = settled_leader(mesh)
    assert leader is not None, "the mesh did not settle"
    return leader


def power(rng: random.Random) -> tuple[int, int]:
    """A battery and link per mille; often low batteries, so the low-battery rule is exercised."""
    battery = rng.choice((rng.randrange(0, 250), rng.randrange(0, 1001)))
    return battery, rng.randrange(0, 1001)


def model_leader(rule: Rule, leader: str | None, states: dict[str, tuple[int, int]]) -> str:
    live = sorted(int(i[1:]) for i in states)
    score = {int(i[1:]): rule.score(b, link) for i, (b, link) in states.items()}
    battery = {int(i[1:]): b for i, (b, _) in states.items()}
    current = None if leader is None else int(leader[1:])
    return node_id(rule.next_leader(current, live, score, battery))


@pytest.mark.parametrize("hysteresis", [True, False], ids=["hysteresis", "plain"])
def test_model_picks_the_leader_the_core_picks(hysteresis: bool) -> None:
    rule = Rule(hysteresis)
    rng = random.Random(15 if hysteresis else 16)
    handoffs = 0
    for case in range(40):
        size = rng.randrange(2, 8)
        config = Config(heartbeat_ms=HEARTBEAT_MS, margin=rule.margin, weights=rule.weights)
        mesh = Mesh(config, seed=case)
        states = {node_id(i): power(rng) for i in range(size)}
        for i, (battery, link) in states.items():
            mesh.add(i, battery=battery, link=link)
        for i in states:
            mesh.start(i)
        # A first election: the best node leads.
        leader = settle(mesh)
        assert leader == model_leader(rule, None, states), (case, states)

        # New states for the followers; whoever leads once that settled is the incumbent.
        for i in states:
            if i != leader:
                states[i] = power(rng)
                mesh.set_power(i, *states[i])
        incumbent = settle(mesh)

        # The incumbent's own battery and link change: hand over, or keep leading.
        states[incumbent] = power(rng)
        mesh.set_power(incumbent, *states[incumbent])
        leader = settle(mesh)
        assert leader == model_leader(rule, incumbent, states), (case, incumbent, states)
        handoffs += leader != incumbent

        # The leader dies: the best of the others leads.
        mesh.crash(leader)
        del states[leader]
        if states:
            assert settle(mesh) == model_leader(rule, None, states), (case, states)
    assert handoffs >= 5  # the handoff rule itself was exercised, not only elections


def test_hysteresis_keeps_a_leader_the_plain_rule_replaces() -> None:
    """Scores 10 points apart: the plain rule hands over, the margin keeps the incumbent."""
    for hysteresis, expected in ((True, 0), (False, 1)):
        rule = Rule(hysteresis)
        score = [rule.score(800, 500), rule.score(800, 530)]
        assert rule.next_leader(0, [0, 1], score, [800, 800]) == expected


def test_low_battery_rule_hands_over_below_the_margin() -> None:
    rule = Rule(True)
    battery = [150, 300]  # the incumbent is below the 200 per mille threshold
    score = [rule.score(150, 1000), rule.score(300, 200)]
    assert score[1] <= score[0] * 4 + rule.margin  # not by the margin alone ...
    assert rule.next_leader(0, [0, 1], score, battery) == 1  # ... but by the low-battery rule
