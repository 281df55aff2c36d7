"""The clustering literature's head selection: LEACH, SEP and HEED, one call per round.

A scheme's ``plan(r, alive, energy)`` (r counts rounds from 0) returns ``(heads, target)``:
which nodes aggregate this round, and where each node sends its reading (a head's index, or
``SINK``). Heads send to the sink. Members join the nearest head, unless the sink is nearer
than that head: then they send to the sink directly, as the reference simulations of LEACH and
SEP do. A round in which no head is elected sends every reading directly to the sink.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from tools.simulate.field import Field

SINK = -1
Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]
Floats = NDArray[np.float64]

# HEED (Younis and Fahmy, 2004): a node never drops below p_min; its cluster range.
HEED_P_MIN = 1e-4
HEED_RANGE_M = 25.0


def epoch_rounds(p: float) -> int:
    """Rounds of one epoch, round(1/p) as the papers' code has it (5.5 rounds -> 6)."""
    return math.floor(round(1.0 / p, 9) + 0.5)


def leach_threshold(p: Floats, r: int, epoch: Ints, eligible: Bools) -> Floats:
    """T(n) = p / (1 - p (r mod 1/p)) for a node that has not led this epoch, else 0."""
    t = p / (1.0 - p * (r % epoch))
    return np.where(eligible, t, 0.0)


def sep_probabilities(p: float, m: float, alpha: float) -> tuple[float, float]:
    """SEP's weighted election probabilities (normal, advanced) for a fraction m of advanced
    nodes holding 1 + alpha times the energy: p/(1 + alpha m) and p(1 + alpha)/(1 + alpha m)."""
    return p / (1.0 + alpha * m), p * (1.0 + alpha) / (1.0 + alpha * m)


def send_to_nearest(field: Field, heads: Bools, sink_if_nearer: bool = True) -> Ints:
    """Each node's target: its nearest head (or the sink if nearer); heads send to the sink."""
    target = np.full(field.n, SINK, dtype=np.int64)
    chosen = np.flatnonzero(heads)
    if chosen.size:
        d = field.dist[:, chosen]
        j = np.argmin(d, axis=1)
        target = chosen[j]
        if sink_if_nearer:
            target = np.where(d[np.arange(field.n), j] < field.d_sink, target, SINK)
    target[heads] = SINK
    return target


class Threshold:
    """LEACH's election (and SEP's, with per-node probabilities): a node that has not led in
    the current epoch becomes head with probability T(n); epochs restart every round(1/p)."""

    def __init__(self, name: str, field: Field, rng: np.random.Generator, p: Floats) -> None:
        self.name = name
        self.field = field
        self.rng = rng
        self.p = p
        self.epoch = np.array([epoch_rounds(x) for x in p], dtype=np.int64)
        self.eligible = np.ones(field.n, dtype=bool)  # the set G of the papers

    def plan(self, r: int, alive: Bools, energy: Floats) -> tuple[Bools, Ints]:
        self.eligible |= r % self.epoch == 0
        draw = self.rng.random(self.field.n)  # one per node, dead or not: streams stay aligned
        heads = alive & (draw <= leach_threshold(self.p, r, self.epoch, self.eligible))
        self.eligible &= ~heads
        return heads, send_to_nearest(self.field, heads)


def leach(field: Field, rng: np.random.Generator, p: float) -> Threshold:
    return Threshold("LEACH", field, rng, np.full(field.n, p))


def sep(field: Field, rng: np.random.Generator, p: float, alpha: float) -> Threshold:
    m = float(field.advanced.mean())
    normal, advanced = sep_probabilities(p, m, alpha)
    return Threshold("SEP", field, rng, np.where(field.advanced, advanced, normal))


def heed_probability(c_prob: float, energy: Floats, e_max: float) -> Floats:
    """HEED's initial CH_prob = max(C_prob E_residual / E_max, p_min)."""
    return np.maximum(c_prob * energy / e_max, HEED_P_MIN)


class Heed:
    """HEED: iterative, energy-weighted head selection within a cluster range.

    Every node starts at CH_prob (above) and doubles it each iteration until it reaches 1. In
    an iteration a node that hears (tentative or final) heads within range picks the one of
    least cost; if that is itself it announces (final once CH_prob is 1, else tentative); a
    node hearing none announces a tentative head with probability CH_prob (final at 1). At the
    end a node that is not a final head joins the least-cost final head in range, or becomes
    one. Cost: AMRP, the mean squared distance to the neighbours in range (the power they need
    to reach the node). All announcements of an iteration are heard in the next one.
    """

    name = "HEED"

    def __init__(
        self,
        field: Field,
        rng: np.random.Generator,
        c_prob: float,
        cluster_range: float = HEED_RANGE_M,
    ) -> None:
        self.field = field
        self.rng = rng
        self.c_prob = c_prob
        self.near = field.dist <= cluster_range  # includes the node itself
        self.e_max = float(field.initial.max())

    def plan(self, r: int, alive: Bools, energy: Floats) -> tuple[Bools, Ints]:
        field = self.field
        n = field.n
        index = np.arange(n)
        near = self.near & alive[None, :] & alive[:, None]
        neighbours = near.sum(axis=1) - 1
        cost = np.where(near, field.dist**2, 0.0).sum(axis=1) / np.maximum(neighbours, 1)
        prob = np.where(alive, heed_probability(self.c_prob, energy, self.e_max), 0.0)
        tentative = np.zeros(n, dtype=bool)
        final = np.zeros(n, dtype=bool)
        done = ~alive
        while not done.all():
            heard = near & (tentative | final)[None, :]
            hears = heard.any(axis=1)
            best = np.argmin(np.where(heard, cost[None, :], np.inf), axis=1)
            draw = self.rng.random(n)
            going = ~done
            announce = going & ((hears & (best == index)) | (~hears & (draw <= prob)))
            final |= announce & (prob >= 1.0)
            tentative |= announce & (prob < 1.0)
            done |= prob >= 1.0
            prob = np.minimum(2.0 * prob, 1.0)
        heard = near & final[None, :]
        joins = alive & ~final & heard.any(axis=1)
        final |= alive & ~final & ~joins
        best = np.argmin(np.where(heard, cost[None, :], np.inf), axis=1)
        target = np.where(joins, best, SINK)
        target = np.where(field.dist[index, np.maximum(target, 0)] < field.d_sink, target, SINK)
        return final, target
