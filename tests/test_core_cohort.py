"""The mesh's deferred deliveries (agent/core/cohort.py) leave every node exactly as handing
each message to each node does.

Each scenario runs twice from the same seed: ``Mesh(batched=True)``, where steady followers
book their heartbeats from a cohort's log, and ``batched=False``, one ``Node.receive`` per
delivery. After every step (a few milliseconds of simulated time, or a crash, restart, stop,
power change, partition, heal or loss change) the two must agree on every field of every node
(peer tables included), the mesh's counters, its queue of pending events, and the history of
view changes so far.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from agent.core.cohort import Shared
from agent.core.mesh import Mesh
from agent.core.messages import PROBE, Msg
from agent.core.node import ROLE_LEADER, Config
from agent.core.peers import PeerTable
from agent.core.prng import Prng


def state(value: Any) -> Any:
    """A comparable picture of a node's field (objects by their contents, not identity)."""
    if isinstance(value, PeerTable):
        peers = sorted(
            (p.id, p.score, p.battery, p.link, p.flags, p.term, p.heard)
            for p in value.by_id.values()
        )
        return (peers, value.max_peers, value.evicted, value.oldest)
    if isinstance(value, Msg):
        return tuple(getattr(value, name) for name in Msg.__slots__)
    if isinstance(value, Prng):
        return value.state
    if isinstance(value, list | tuple):
        return [state(v) for v in value]
    return value


def picture(mesh: Mesh, history: list[tuple]) -> dict[str, Any]:
    nodes = {}
    for sim in mesh.order:
        fields = {}
        if sim.node is not None:
            for name, value in vars(sim.node).items():
                if name != "config":
                    fields[name] = state(value)
        nodes[sim.id] = (sim.view, sim.tick_at, sim.boots, sim.sent, sim.terms_started, fields)
    queue = sorted(
        (at, prio, seq, state(a) if isinstance(a, Msg) else getattr(a, "id", None),
         getattr(b, "id", None))
        for at, prio, seq, a, b in mesh._queue  # type: ignore[attr-defined]
    )  # fmt: skip
    return {
        "now": mesh.now,
        "counts": (mesh.messages, mesh.dropped, mesh.delivered),
        "prng": mesh.prng.state,
        "queue": queue,
        "nodes": nodes,
        "history": list(history),
    }


class Run:
    """One mesh of a scenario, recording its view changes."""

    def __init__(
        self,
        n: int,
        seed: int,
        batched: bool,
        quorum: int,
        max_peers: int,
        delay: int = 10,
        probes: int = 0,
    ) -> None:
        self.history: list[tuple] = []
        # Short timeouts and, with ``delay``, long delivery delays: reports still move a
        # follower's evidence when it is about to suspect, which the wakeup must follow.
        suspect = 2 if delay > 10 else 3
        config = Config(
            heartbeat_ms=100,
            quorum=quorum,
            max_peers=max_peers,
            suspect_intervals=suspect,
            probes=probes,
        )
        self.mesh = Mesh(
            config, seed=seed, max_delay_ms=delay, on_change=self._changed, batched=batched
        )
        for i in range(n):
            self.mesh.add("n%02d" % i, battery=100 + (i * 397) % 900, link=200 + (i * 211) % 800)
        for sim in self.mesh.order:
            self.mesh.start(sim.id)

    def _changed(self, now: int, sim: Any) -> None:
        self.history.append((now, sim.id, sim.view))


def leader_of(mesh: Mesh) -> str | None:
    for sim in mesh.order:
        if sim.up and sim.node is not None and sim.node.role == ROLE_LEADER:
            return sim.id
    return None


def scenario(rng: random.Random, ids: list[str], steps: int) -> list[tuple]:
    """Steps: mostly quiet time, with the faults the core must survive."""
    out: list[tuple] = []
    for _ in range(steps):
        r = rng.random()
        if r < 0.55:
            out.append(("run", rng.randint(1, 400)))
        elif r < 0.65:
            out.append(("crash-leader",))
        elif r < 0.72:
            out.append((rng.choice(["crash", "restart", "stop", "start"]), rng.choice(ids)))
        elif r < 0.78:
            out.append(("set", rng.choice(ids), rng.randint(0, 1000), rng.randint(0, 1000)))
        elif r < 0.86:
            groups: list[list[str]] = [[], [], []]
            for node_id in ids:
                if rng.random() < 0.95:  # now and then a node hears nobody
                    groups[rng.randint(0, 2)].append(node_id)
            out.append(("partition", groups))
        elif r < 0.94:
            out.append(("heal",))
        else:
            out.append(("loss", rng.choice([0, 0, 50, 300])))
    out.append(("heal",))
    out.append(("loss", 0))
    out.append(("run", 3000))
    return out


def play(run: Run, step: tuple) -> None:
    mesh = run.mesh
    op = step[0]
    if op == "run":
        mesh.run_until(mesh.now + step[1])
    elif op == "crash-leader":
        leader = leader_of(mesh)
        if leader is not None:
            mesh.crash(leader)
    elif op in ("crash", "restart", "stop", "start"):
        getattr(mesh, op)(step[1])
    elif op == "set":
        mesh.set_power(step[1], battery=step[2], link=step[3])
    elif op == "partition":
        mesh.partition(step[1])
    elif op == "heal":
        mesh.heal()
    else:
        mesh.set_loss(step[1])


def both_ways(
    n: int,
    seed: int,
    steps: int,
    quorum: int = 0,
    max_peers: int = 64,
    delay: int = 10,
    probes: int = 0,
) -> Run:
    rng = random.Random(seed)
    batched = Run(n, seed, True, quorum, max_peers, delay, probes)
    plain = Run(n, seed, False, quorum, max_peers, delay, probes)
    ids = [sim.id for sim in batched.mesh.order]
    for i, step in enumerate(scenario(rng, ids, steps)):
        play(batched, step)
        play(plain, step)
        a = picture(batched.mesh, batched.history)
        b = picture(plain.mesh, plain.history)
        if a != b:
            for key in a:
                if a[key] != b[key]:
                    detail = key
                    if key == "nodes":
                        detail = next(k for k in a[key] if a[key][k] != b[key][k])
                    raise AssertionError(
                        "seed %d, step %d %r: %s differs" % (seed, i, step, detail)
                    )
    return batched


@pytest.mark.parametrize("seed", range(1, 9))
def test_batched_mesh_matches_one_delivery_at_a_time(seed: int) -> None:
    run = both_ways(n=24, seed=seed, steps=60)
    assert len({h[2][1] for h in run.history}) > 3, "the scenario made too few elections"


@pytest.mark.parametrize("seed", range(31, 43))
def test_small_meshes_match(seed: int) -> None:
    # A few followers: one of them often holds the latest evidence when it books the log.
    both_ways(n=3 + seed % 3, seed=seed, steps=40, delay=(10, 70, 250)[seed % 3])


@pytest.mark.parametrize("seed", range(21, 27))
def test_slow_radios_match_too(seed: int) -> None:
    # Up to 2.5 intervals: a member's own report may arrive after its leader's next heartbeat.
    both_ways(n=24, seed=seed, steps=60, delay=70 if seed % 2 else 250)


@pytest.mark.parametrize("seed", range(51, 55))
def test_probing_meshes_match_too(seed: int) -> None:
    # Probes and their answers go to one node: a cohort member that receives one on its own
    # leaves the cohort (slow radios and partitions make probes without loss).
    seen: list[int] = []
    deliver = Mesh._deliver

    def counting(mesh: Mesh, msg: Msg, sender: Any) -> None:
        if msg.kind == PROBE:
            seen.append(msg.kind)
        deliver(mesh, msg, sender)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Mesh, "_deliver", counting)
        both_ways(n=12, seed=seed, steps=60, delay=(10, 70)[seed % 2], probes=2)
    assert seen, "no probe in the scenario"


def test_quorum_meshes_match_too() -> None:
    both_ways(n=15, seed=11, steps=60, quorum=15)


def test_a_mesh_too_big_for_its_tables_matches_without_cohorts() -> None:
    # 24 nodes, 16 peers a table: every table evicts, so no cohort may defer anything.
    run = both_ways(n=24, seed=12, steps=30, max_peers=16)
    assert not run.mesh._cohorts  # type: ignore[attr-defined]


def test_a_settled_mesh_defers_nearly_every_delivery() -> None:
    """The batched path is the one that runs: few deliveries reach ``Node.receive``."""
    run = Run(200, 5, True, 0, 256)
    mesh = run.mesh
    mesh.run_until(3000)
    handed = []
    original = mesh._receive  # type: ignore[attr-defined]

    def counting(sim, msg):  # type: ignore[no-untyped-def]
        handed.append(msg)
        original(sim, msg)

    mesh._receive = counting  # type: ignore[attr-defined]
    before = mesh.delivered
    mesh.run_until(5000)
    delivered = mesh.delivered - before
    assert delivered > 150_000  # 200 nodes x 199 receivers x 20 intervals, roughly
    assert len(handed) < delivered // 100
    # The peer entries really are shared between the tables.
    tables = [s.node.peers.by_id for s in mesh.order if s.node is not None]
    shared = sum(1 for t in tables for p in t.values() if type(p) is Shared)
    assert shared > len(tables) * 150


def test_a_large_settled_mesh_matches() -> None:
    """150 nodes through a leader crash, a partition and a heal (cohorts of many members)."""
    runs = [Run(150, 3, batched, 0, 256) for batched in (True, False)]
    steps = [("run", 2000), ("crash-leader",), ("run", 1500)]
    steps += [("partition", [["n%02d" % i for i in range(0, 150, 2)],
                             ["n%02d" % i for i in range(1, 150, 2)]]), ("run", 1500)]  # fmt: skip
    steps += [("heal",), ("run", 1500)]
    for step in steps:
        for run in runs:
            play(run, step)
        assert picture(runs[0].mesh, runs[0].history) == picture(runs[1].mesh, runs[1].history)
