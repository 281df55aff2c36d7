"""The round loop, the setups, and lifetimes per scheme and seed.

A round: every live node takes one reading of ``PACKET_BITS``; a scheme picks this round's
aggregators and where each node sends; energy is charged (send, receive, aggregate, the
aggregator's packet to the sink, and the model's idle cost); a node whose energy is at or below
zero after the round is dead from the next round on (its reading of that round still arrives).
Every reading of a live node reaches the sink (no loss, no collisions), aggregated or not.
Rounds count from 1: FND, HND and LND are the rounds in which the first node, half the nodes
(n/2 rounded down left alive) and the last node died.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from tools.simulate.energy import E0, PACKET_BITS, Esp32, FirstOrderRadio
from tools.simulate.field import SINK as SINK_XY
from tools.simulate.field import Field, scheme_rng
from tools.simulate.literature import HEED_RANGE_M, SINK, Heed, leach, sep
from tools.simulate.rotation import Direct, Meshelect, Static

Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]
Floats = NDArray[np.float64]


class Scheme(Protocol):
    name: str

    def plan(self, r: int, alive: Bools, energy: Floats) -> tuple[Bools, Ints]: ...


class Model(Protocol):
    name: str
    e0: float

    def tx(self, bits: int, d: Floats) -> Floats: ...
    def rx(self, bits: int) -> float: ...
    def aggregate(self, bits: int, signals: Ints) -> Floats: ...
    def idle(self, alive: Bools, heads: Bools) -> Floats: ...
    def describe(self) -> str: ...


@dataclass
class Options:
    nodes: int = 100
    sink: tuple[float, float] = SINK_XY
    seeds: Sequence[int] = tuple(range(1, 21))
    p: float = 0.1  # the desired share of heads (LEACH, SEP; HEED's C_prob)
    meshes: int = 4  # meshelect: meshes by position, a square number
    advanced: float = 0.1  # the sep setup: share of advanced nodes (m) ...
    alpha: float = 1.0  # ... holding 1 + alpha times the energy
    e0: float = E0  # J, first-order radio model
    battery_mah: float = 2000.0  # esp32 setup
    sleepy_battery_mah: float = 20.0  # esp32-sleepy setup (lifetimes scale with capacity)
    round_s: float = 60.0  # esp32 setups
    heed_range: float = HEED_RANGE_M
    max_rounds: int = 20000
    schemes: Sequence[str] = ()  # empty: all


@dataclass
class Setup:
    name: str
    title: str
    model: Model
    advanced: float = 0.0
    alpha: float = 0.0


def make_setup(name: str, o: Options) -> Setup:
    if name == "leach":
        return Setup(name, "first-order radio, all nodes alike", FirstOrderRadio(e0=o.e0))
    if name == "sep":
        title = "first-order radio, %g%% advanced nodes with %gx energy (SEP's setup)" % (
            100 * o.advanced,
            1 + o.alpha,
        )
        return Setup(name, title, FirstOrderRadio(e0=o.e0), o.advanced, o.alpha)
    if name == "esp32":
        model = Esp32("awake", battery_mah=o.battery_mah, round_s=o.round_s)
        return Setup(name, "ESP32, every node awake in modem sleep (meshelect today)", model)
    if name == "esp32-sleepy":
        model = Esp32("sleepy", battery_mah=o.sleepy_battery_mah, round_s=o.round_s)
        return Setup(name, "ESP32, members deep-sleep between readings", model)
    raise ValueError("unknown setup %r (choose from %s)" % (name, ", ".join(SETUPS)))


SETUPS = ("leach", "sep", "esp32", "esp32-sleepy")

SchemeFactory = Callable[[Field, Options, Setup], Scheme]
SCHEMES: dict[str, SchemeFactory] = {
    "direct": lambda f, o, s: Direct(f),
    "static": lambda f, o, s: Static(f),
    "leach": lambda f, o, s: leach(f, scheme_rng(f.seed), o.p),
    "heed": lambda f, o, s: Heed(f, scheme_rng(f.seed), o.p, o.heed_range),
    "sep": lambda f, o, s: sep(f, scheme_rng(f.seed), o.p, s.alpha),
    "meshelect": lambda f, o, s: Meshelect(f, hysteresis=True),
    "meshelect-plain": lambda f, o, s: Meshelect(f, hysteresis=False),
}


@dataclass
class Run:
    scheme: str
    seed: int
    alive: Ints  # live nodes after each round
    readings: int  # readings that reached the sink
    packets: int  # packets the sink received (aggregates and direct readings)

    def died(self, left: int) -> int | None:
        """The round (from 1) after which at most ``left`` nodes were alive, or None."""
        hits = np.flatnonzero(self.alive <= left)
        return int(hits[0]) + 1 if hits.size else None

    def lifetimes(self, n: int) -> tuple[int | None, int | None, int | None]:
        return self.died(n - 1), self.died(n // 2), self.died(0)


def play(field: Field, model: Model, scheme: Scheme, max_rounds: int) -> Run:
    bits = PACKET_BITS
    energy = field.initial.copy()
    rx = model.rx(bits)
    alive_after: list[int] = []
    readings = packets = 0
    for r in range(max_rounds):
        alive = energy > 0
        count = int(alive.sum())
        if count == 0:
            break
        heads, target = scheme.plan(r, alive, energy)
        heads = heads & alive
        cost = model.idle(alive, heads)
        senders = alive & ~heads
        direct = senders & (target == SINK)
        cost[direct] += model.tx(bits, field.d_sink[direct])
        members = np.flatnonzero(senders & (target != SINK))
        to = target[members]
        cost[members] += model.tx(bits, field.dist[members, to])
        received = np.bincount(to, minlength=field.n)
        cost += received * rx
        cost[heads] += model.aggregate(bits, received[heads] + 1)
        cost[heads] += model.tx(bits, field.d_sink[heads])
        energy = np.where(alive, energy - cost, energy)
        readings += count
        packets += int(heads.sum() + direct.sum())
        alive_after.append(int((energy > 0).sum()))
    return Run(scheme.name, field.seed, np.array(alive_after, dtype=np.int64), readings, packets)


@dataclass
class Summary:
    """One scheme of one setup over all seeds."""

    scheme: str
    n: int
    runs: list[Run] = field(default_factory=list)

    def lifetimes(self) -> list[tuple[int | None, int | None, int | None]]:
        return [run.lifetimes(self.n) for run in self.runs]

    def stat(self, which: int) -> tuple[float, float, int]:
        """(mean, standard deviation, seeds that did not reach it) of FND (0), HND (1), LND (2)."""
        values = [t[which] for t in self.lifetimes()]
        reached = [v for v in values if v is not None]
        missing = len(values) - len(reached)
        if not reached:
            return math.nan, math.nan, missing
        spread = statistics.stdev(reached) if len(reached) > 1 else 0.0
        return statistics.fmean(reached), spread, missing

    def mean(self, attribute: str) -> float:
        return statistics.fmean(getattr(run, attribute) for run in self.runs)

    def alive_curve(self) -> Floats:
        """Mean live nodes at the end of each round, over seeds (0 after the last death)."""
        length = max(len(run.alive) for run in self.runs)
        curves = np.zeros((len(self.runs), length + 1))
        for i, run in enumerate(self.runs):
            curves[i, 0] = self.n
            curves[i, 1 : len(run.alive) + 1] = run.alive
            if len(run.alive) < length:  # all dead: stays 0; cut at max_rounds: stays as it was
                curves[i, len(run.alive) + 1 :] = run.alive[-1] if len(run.alive) else self.n
        return np.asarray(curves.mean(axis=0))


@dataclass
class Result:
    setup: Setup
    options: Options
    summaries: list[Summary]


Progress = Callable[[str], None]


def scheme_names(options: Options) -> list[str]:
    names = list(options.schemes) or list(SCHEMES)
    unknown = [s for s in names if s not in SCHEMES]
    if unknown:
        raise ValueError("unknown scheme %s (choose from %s)" % (unknown[0], ", ".join(SCHEMES)))
    return names


def simulate(setup: Setup, options: Options, progress: Progress | None = None) -> Result:
    """Every scheme on the same fields, one field per seed."""
    names = scheme_names(options)
    summaries = {name: Summary(name, options.nodes) for name in names}
    for i, seed in enumerate(options.seeds):
        field_ = Field(
            options.nodes,
            seed,
            setup.model.e0,
            advanced=setup.advanced,
            alpha=setup.alpha,
            meshes=options.meshes,
            sink=options.sink,
        )
        for name in names:
            scheme = SCHEMES[name](field_, options, setup)
            run = play(field_, setup.model, scheme, options.max_rounds)
            summaries[name].scheme = scheme.name
            summaries[name].runs.append(run)
        if progress is not None:
            progress("%s: seed %d of %d done" % (setup.name, i + 1, len(options.seeds)))
    return Result(setup, options, [summaries[name] for name in names])
