"""meshelect's score rotation, a static aggregator, and direct transmission.

meshelect runs one leader per mesh; every member sends its reading to the leader, which sends
one aggregate to the sink. The leader is chosen the way the real core chooses it, with the real
score (``agent.core.score.compute_score``) and the real order (``better``: higher score, then
smaller id), once per round:

- no leader, or the leader died: the best live node leads (the core's claims by rank: the best
  claims first and the others follow it; a failover takes about a second, well within a round);
- otherwise the leader's handoff rule (``Node._leader_duties``): it hands over to the best other
  live node when that node's score is above its own by more than the margin, or when its own
  battery is low (off mains) and the best is not low and ranks above it.

The per-round rule here is checked against real ``Node`` objects on ``agent.core.mesh.Mesh`` by
tests/test_simulate_rotation.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from agent.core.node import Config
from agent.core.score import Weights, better, compute_score, is_low_battery
from tools.simulate.field import Field, node_id
from tools.simulate.literature import SINK

Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]
Floats = NDArray[np.float64]

# Battery per mille -> score, for one link figure: the real compute_score, tabulated once.
_SCORES: dict[tuple[int, bool], Ints] = {}


class Rule:
    """The core's choice of leader, with its hysteresis and low-battery rule or without (no
    margin, no low-battery threshold: the best node always leads)."""

    def __init__(self, hysteresis: bool = True) -> None:
        config = Config()
        self.hysteresis = hysteresis
        self.margin = config.margin if hysteresis else 0
        self.weights = config.weights if hysteresis else Weights(low_battery=0)

    def score(self, battery: int, link: int) -> int:
        return int(compute_score(battery, link, weights=self.weights))

    def scores(self, link: int) -> Ints:
        """Scores for battery 0..1000 at this link figure."""
        key = (link, self.hysteresis)
        table = _SCORES.get(key)
        if table is None:
            table = np.array([self.score(b, link) for b in range(1001)], dtype=np.int64)
            _SCORES[key] = table
        return table

    def best(self, nodes: Sequence[int], score: Sequence[int]) -> int:
        """The node ``better`` ranks first: the highest score, then the smallest id (node ids
        follow index order, see field.node_id)."""
        return max(nodes, key=lambda i: (score[i], -i))

    def next_leader(
        self, leader: int | None, live: Sequence[int], score: Sequence[int], battery: Sequence[int]
    ) -> int:
        """Who leads the live nodes ``live`` (indices, not empty) this round."""
        if leader is None or leader not in live:
            return self.best(live, score)
        others = [i for i in live if i != leader]
        if not others:
            return leader
        top = self.best(others, score)
        w = self.weights
        if score[leader] < 0:
            return top
        if (
            is_low_battery(battery[leader], False, w)
            and not is_low_battery(battery[top], False, w)
            and better(score[top], node_id(top), score[leader], node_id(leader))
        ):
            return top
        if score[top] > score[leader] + self.margin:
            return top
        return leader


def battery_per_mille(energy: Floats, initial: Floats) -> Ints:
    """What a battery gauge reports: the share of the node's own capacity left, per mille."""
    return np.clip(np.floor(energy * 1000.0 / initial), 0, 1000).astype(np.int64)


class Meshelect:
    def __init__(self, field: Field, hysteresis: bool = True) -> None:
        self.name = "meshelect" if hysteresis else "meshelect, no hysteresis"
        self.field = field
        self.rule = Rule(hysteresis)
        self.table = np.stack([self.rule.scores(int(link)) for link in field.link])
        self.leaders: list[int | None] = [None] * field.meshes
        self.changes = 0  # leader changes other than the first election of a mesh

    def plan(self, r: int, alive: Bools, energy: Floats) -> tuple[Bools, Ints]:
        field = self.field
        battery = battery_per_mille(energy, field.initial)
        score = self.table[np.arange(field.n), battery]
        heads = np.zeros(field.n, dtype=bool)
        target = np.full(field.n, SINK, dtype=np.int64)
        scores = score.tolist()
        batteries = battery.tolist()
        for k in range(field.meshes):
            live = np.flatnonzero(alive & (field.mesh == k))
            if live.size == 0:
                self.leaders[k] = None
                continue
            before = self.leaders[k]
            leader = self.rule.next_leader(before, live.tolist(), scores, batteries)
            if before is not None and leader != before:
                self.changes += 1
            self.leaders[k] = leader
            heads[leader] = True
            target[live] = leader
            target[leader] = SINK
        return heads, target


class Static:
    """One aggregator for the whole field: the live node nearest the sink, for as long as it
    lives (then the next nearest). No rotation: what any leader election without an energy
    term gives."""

    name = "static aggregator"

    def __init__(self, field: Field) -> None:
        self.field = field

    def plan(self, r: int, alive: Bools, energy: Floats) -> tuple[Bools, Ints]:
        field = self.field
        heads = np.zeros(field.n, dtype=bool)
        target = np.full(field.n, SINK, dtype=np.int64)
        if alive.any():
            leader = int(np.argmin(np.where(alive, field.d_sink, np.inf)))
            heads[leader] = True
            target[:] = leader
            target[leader] = SINK
        return heads, target


class Direct:
    """No aggregation: every node sends its reading to the sink itself."""

    name = "direct"

    def __init__(self, field: Field) -> None:
        self.field = field

    def plan(self, r: int, alive: Bools, energy: Floats) -> tuple[Bools, Ints]:
        n = self.field.n
        return np.zeros(n, dtype=bool), np.full(n, SINK, dtype=np.int64)
