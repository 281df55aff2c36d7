"""Unit tests of the election core's parts: score, PRNG, peer table, node API, message economy."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.core.mesh import Mesh
from agent.core.messages import CLAIM, HANDOFF, HEARTBEAT, Msg
from agent.core.node import (
    HEARD_NONE,
    ROLE_DOWN,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    Config,
    Node,
    make_config,
)
from agent.core.peers import PeerTable
from agent.core.prng import Prng
from agent.core.score import INELIGIBLE, Weights, better, compute_score


def test_score_scale_and_weights() -> None:
    assert compute_score(1000, 1000) == 1000
    assert compute_score(0, 0) == 0
    assert compute_score(500, 1000, mains=True) == 1000  # mains counts as a full battery
    assert compute_score(900, 900, eligible=False) == INELIGIBLE
    # Below the low-battery threshold, off mains, the score drops to a quarter.
    assert compute_score(199, 1000) == (600 * 199 + 400 * 1000) // 1000 // 4
    assert compute_score(199, 1000, mains=True) == 1000
    link_only = Weights(battery=0, link=1)
    assert compute_score(300, 800, weights=link_only) == 800
    with pytest.raises(ValueError, match=r"^score\.battery: .*cannot both be 0"):
        Weights(battery=0, link=0)


def test_ties_break_by_smaller_id() -> None:
    assert better(500, "a", 500, "b")
    assert not better(500, "b", 500, "a")
    assert better(501, "z", 500, "a")


def test_prng_is_deterministic_and_spread() -> None:
    a, b = Prng(7), Prng(7)
    draws = [a.below(100) for _ in range(1000)]
    assert draws == [b.below(100) for _ in range(1000)]
    assert len(set(draws)) == 100
    assert Prng(8).next() != Prng(7).next()


def test_peer_table_is_bounded_and_evicts_the_stalest() -> None:
    table = PeerTable(max_peers=3)
    for i, node_id in enumerate(["a", "b", "c", "d"]):
        table.touch(node_id, now=i * 10)
    assert len(table) == 3
    assert "a" not in table and table.evicted == 1
    assert table.forget_older_than(15) == 1  # b (heard at 10) goes
    assert table.live_ids(0) == ["c", "d"]


@pytest.mark.parametrize("bad", ["", "x" * 17, "é" * 9])
def test_node_ids_are_1_to_16_bytes(bad: str) -> None:
    with pytest.raises(ValueError, match="16"):
        Node(bad)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        Config(heartbeat_ms=5)
    with pytest.raises(ValueError, match="quorum"):
        Config(quorum=-1)
    cfg = Config(heartbeat_ms=250)
    assert (cfg.suspect_ms, cfg.listen_ms, cfg.claim_slot_ms) == (750, 500, 62)


@pytest.mark.parametrize(
    ("heartbeat_ms", "election", "score", "message"),
    [
        (5, {}, {}, "heartbeat_ms: must be an integer within 20..60000, got 5"),
        (60001, {}, {}, "heartbeat_ms: must be an integer within 20..60000, got 60001"),
        ("250", {}, {}, "heartbeat_ms: must be an integer within 20..60000, got '250'"),
        (250, {"suspect_intervals": 1}, {}, "election.suspect_intervals: must be an integer within 2..100, got 1"),
        (250, {"listen_intervals": 101}, {}, "election.listen_intervals: must be an integer within 0..100, got 101"),
        (250, {"margin": 1001}, {}, "election.margin: must be an integer within 0..1000, got 1001"),
        (250, {"quorum": True}, {}, "election.quorum: must be an integer within 0..1000, got True"),
        (250, {"max_peers": 0}, {}, "election.max_peers: must be an integer within 1..4096, got 0"),
        (250, {"typo": 1}, {}, "election.typo: unknown setting"),
        (250, {}, {"low_battery": 1001}, "score.low_battery: must be an integer within 0..1000, got 1001"),
        (250, {}, {"link": -1}, "score.link: must be an integer within 0..1000000, got -1"),
        (250, {}, {"battery": 0, "link": 0}, "score.battery: score.battery and score.link cannot both be 0"),
        (250, {}, {"weight": 1}, "score.weight: unknown setting"),
    ],
)  # fmt: skip
def test_settings_are_checked_by_the_core_and_named_as_in_the_config_files(
    heartbeat_ms: Any, election: dict[str, Any], score: dict[str, Any], message: str
) -> None:
    """Both runtimes' config checks and `meshelect firmware deploy` show these as they are."""
    with pytest.raises(ValueError, match="^%s$" % re.escape(message)):
        make_config(heartbeat_ms, election, score)


def test_make_config_keeps_the_core_defaults_for_what_is_not_set() -> None:
    cfg = make_config(100, {"quorum": 5, "margin": None}, {"battery": 1})
    assert (cfg.heartbeat_ms, cfg.quorum, cfg.majority, cfg.margin) == (100, 5, 3, 150)
    assert (cfg.weights.battery, cfg.weights.link, cfg.weights.low_battery) == (1, 400, 200)
    assert (cfg.suspect_intervals, cfg.suspect_ms) == (3, 300)
    assert make_config().heartbeat_ms == Config().heartbeat_ms == 250
    # 0 is a value, not "the default": no hysteresis, claim without listening first.
    zero = make_config(250, {"margin": 0, "listen_intervals": 0})
    assert (zero.margin, zero.listen_ms) == (0, 0)


def test_a_lone_node_elects_itself_and_ticks_are_idempotent() -> None:
    node = Node("solo", Config(heartbeat_ms=100))
    node.start(0)
    assert node.role == ROLE_FOLLOWER and node.outbox[0].kind == HEARTBEAT
    now = 0
    for _ in range(20):
        now = node.wakeup
        node.tick(now)
        node.tick(now)  # calling again at the same time changes nothing
    assert node.role == ROLE_LEADER and node.leader == "solo" and node.term == 1
    kinds = [m.kind for m in node.outbox]
    assert kinds.count(CLAIM) == 1
    # One heartbeat per interval (+-1/16 jitter), never more.
    assert kinds.count(HEARTBEAT) <= now // 100 + 2


def test_follower_heartbeat_reports_how_long_ago_it_heard_its_leader() -> None:
    node = Node("f")
    node.start(0)
    del node.outbox[:]
    node.receive(Msg(HEARTBEAT, "boss", term=3, flags=1, score=900), now=100)
    assert (node.term, node.leader) == (3, "boss")
    node.tick(node.wakeup)
    beat = node.outbox[-1]
    assert beat.kind == HEARTBEAT and beat.term == 3 and 0 < beat.heard < HEARD_NONE


def test_stale_terms_are_ignored() -> None:
    node = Node("f")
    node.start(0)
    node.receive(Msg(HEARTBEAT, "new", term=5, flags=1, score=500), now=10)
    node.receive(Msg(HEARTBEAT, "old", term=4, flags=1, score=999), now=20)
    node.receive(Msg(CLAIM, "old", term=4, score=999), now=30)
    assert (node.term, node.leader) == (5, "new")


def test_handoff_names_the_successor_who_takes_over_in_the_next_term() -> None:
    node = Node("succ")
    node.start(0)
    node.receive(Msg(HEARTBEAT, "boss", term=2, flags=1, score=500), now=10)
    del node.outbox[:]
    node.receive(Msg(HANDOFF, "boss", term=2, target="succ"), now=20)
    assert (node.role, node.term, node.leader) == (ROLE_LEADER, 3, "succ")
    assert node.outbox[0].kind == HEARTBEAT and node.outbox[0].flags & 1
    assert node.lead_reason == "score"


def test_stop_and_crash_go_down_and_stay_silent() -> None:
    node = Node("n")
    node.start(0)
    node.stop(5)
    assert node.role == ROLE_DOWN
    sent = len(node.outbox)
    node.tick(10_000)
    node.receive(Msg(HEARTBEAT, "x", term=1, flags=1, score=1), 10_001)
    assert len(node.outbox) == sent


def build_mesh(n: int, seed: int = 1) -> Mesh:
    mesh = Mesh(Config(heartbeat_ms=250, max_peers=n), seed=seed)
    for i in range(n):
        mesh.add("n%03d" % i, battery=200 + (i * 37) % 800, link=300 + (i * 53) % 700)
    for sim in mesh.order:
        mesh.start(sim.id)
    return mesh


def count_kinds(mesh: Mesh, until: int) -> dict[int, int]:
    """Run to ``until`` and count what was sent by kind (wrapping the mesh's send path)."""
    counts: dict[int, int] = {}
    original = mesh._after

    def counting(sim):  # type: ignore[no-untyped-def]
        for m in sim.node.outbox:
            counts[m.kind] = counts.get(m.kind, 0) + 1
        original(sim)

    mesh._after = counting  # type: ignore[method-assign]
    mesh.run_until(until)
    mesh._after = original  # type: ignore[method-assign]
    return counts


def test_steady_state_costs_one_heartbeat_per_node_per_interval() -> None:
    mesh = build_mesh(60)
    mesh.run_until(5_000)
    counts = count_kinds(mesh, 15_000)
    intervals = 10_000 // 250
    assert set(counts) == {HEARTBEAT}
    # Each node sends one heartbeat per interval; jitter may shift one across the boundary.
    assert counts[HEARTBEAT] <= 60 * (intervals + 1)


def test_an_election_costs_O_n_messages() -> None:
    mesh = build_mesh(60)
    mesh.run_until(5_000)
    leader = next(s for s in mesh.order if s.node.role == ROLE_LEADER)
    mesh.crash(leader.id)
    counts = count_kinds(mesh, 7_000)
    extra = sum(v for k, v in counts.items() if k != HEARTBEAT)
    assert 1 <= extra <= 60  # claims: usually exactly one
    live = mesh.live()
    leaders = {s.node.leader for s in live}
    assert len(leaders) == 1 and None not in leaders


@pytest.mark.parametrize("start_ms", [0, (1 << 30) - 5000, 3 << 30, 1 << 40])
def test_long_uptime_changes_nothing(start_ms: int) -> None:
    # ``now`` never wraps (the runtimes count ms since boot), so after 12.4 days it passes
    # 2**30: "no deadline" must stay later than any now, or every follower would claim.
    mesh = Mesh(Config(heartbeat_ms=250), seed=7)
    for i in range(4):
        mesh.add("n%d" % i, battery=900 - 100 * i)
    mesh.now = start_ms
    for i in range(4):
        mesh.start("n%d" % i)
    mesh.run_until(start_ms + 60_000)
    nodes = [sim.node for sim in mesh.live()]
    assert sum(node.stats_terms_started for node in nodes) == 1
    assert {node.leader for node in nodes} == {"n0"}
    mesh.crash("n0")
    mesh.run_until(start_ms + 120_000)
    nodes = [sim.node for sim in mesh.live()]
    assert {node.leader for node in nodes} == {"n1"}
    assert sum(node.stats_terms_started for node in nodes) <= 2
