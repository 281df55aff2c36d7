"""The election as an explicit machine: the role x event table in agent/core/node.py is the one
in docs/design.md, and what simulated meshes do never leaves it.

The table's "may become" column is a claim about the code; the random meshes below (crashes,
restarts, graceful stops, partitions, loss, power changes, with and without quorum) check it
on every cell that runs, and that the core's view events say exactly where each call left the
node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.core import node as core
from agent.core.mesh import Mesh
from agent.core.messages import F_LEADER, HEARTBEAT, LEAVE, Msg
from agent.core.node import (
    HEARD_NONE,
    MACHINE,
    ROLE_CANDIDATE,
    ROLE_DOWN,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    ROLE_NAMES,
    Config,
    Node,
)
from agent.core.prng import Prng
from tests.paths import REPO_ROOT

# The doc's names of the events, in the order of MACHINE's columns (node.py's _ON_*).
EVENTS = (
    "leader heartbeat",
    "report",
    "other heartbeat",
    "claim",
    "handoff",
    "leave",
    "probe",
    "heartbeat due",
    "timers",
)
# Node.phase: 0..3 in this order.
PHASES = ("listening", "following", "suspecting", "claiming")
ROLES = {name: role for role, name in enumerate(ROLE_NAMES)}
LIVE_ROLES = (ROLE_FOLLOWER, ROLE_CANDIDATE, ROLE_LEADER)

Cell = tuple[str, frozenset[int]]  # (handler name or "-", roles it may lead to)


def doc_section(title: str) -> str:
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    return text.split(title, 1)[1].split("\n#", 1)[0]


def doc_table() -> dict[tuple[int, int], Cell]:
    cells: dict[tuple[int, int], Cell] = {}
    for line in doc_section("### The election as a machine").splitlines():
        columns = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(columns) != 5 or columns[0] not in ROLES:
            continue
        role, event, handler, _what, after = columns
        key = (ROLES[role], EVENTS.index(event))
        assert key not in cells, "row twice in the doc: %s / %s" % (role, event)
        roles = frozenset(ROLES[name.strip()] for name in after.split(","))
        cells[key] = (handler.strip("`"), roles)
    return cells


def code_table() -> dict[tuple[int, int], Cell]:
    cells: dict[tuple[int, int], Cell] = {}
    for role in LIVE_ROLES:
        row = MACHINE[role]
        assert len(row) == 2 * len(EVENTS)
        for event in range(len(EVENTS)):
            handler, mask = row[2 * event], row[2 * event + 1]
            roles = frozenset(r for r in LIVE_ROLES if mask & (1 << r))
            cells[(role, event)] = (handler.__name__ if handler else "-", roles)
    return cells


def test_the_design_doc_shows_the_machine_of_the_code() -> None:
    assert MACHINE[ROLE_DOWN] is None  # a down node ignores everything until start()
    doc, code = doc_table(), code_table()
    assert len(code) == len(LIVE_ROLES) * len(EVENTS)
    for key in sorted(code.keys() | doc.keys()):
        where = "%s / %s" % (ROLE_NAMES[key[0]], EVENTS[key[1]])
        assert doc.get(key) == code.get(key), where
    # Every handler the table names is a method of Node, and a cell with none changes no role.
    for (role, _event), (handler, roles) in code.items():
        assert handler == "-" or callable(getattr(Node, handler))
        assert handler != "-" or roles == {role}


def test_the_design_doc_lists_the_follower_phases_in_order() -> None:
    rows = [
        line.split("|")[1].strip()
        for line in doc_section("A follower is in one of four phases").splitlines()
        if line.startswith("| ") and not line.startswith("| phase ")
    ]
    assert tuple(rows) == PHASES


class Recorder:
    """Every cell that runs: (role before, event, role after), checked against its mask."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], int] = {}
        self.bad: list[str] = []

    def wrap(self, role: int, event: int, handler: Callable[..., None]) -> Callable[..., None]:
        recorder = self

        def cell(node: Node, msg: Any, now: int) -> None:
            assert node.role == role  # the dispatch picked this row
            handler(node, msg, now)
            recorder.seen[(role, event)] = recorder.seen.get((role, event), 0) + 1
            if not MACHINE[role][2 * event + 1] & (1 << node.role):
                recorder.bad.append(
                    "%s: %s + %s -> %s"
                    % (node.id, ROLE_NAMES[role], EVENTS[event], ROLE_NAMES[node.role])
                )

        return cell

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        table: list[Any] = [None]
        for role in LIVE_ROLES:
            row = list(MACHINE[role])
            for event in range(len(EVENTS)):
                if row[2 * event] is not None:
                    row[2 * event] = self.wrap(role, event, row[2 * event])
            table.append(tuple(row))
        monkeypatch.setattr(core, "MACHINE", tuple(table))
        receive, tick = Node.receive, Node.tick
        recorder = self

        def one_event(node: Node, count: int) -> None:
            new = node.events[count:]
            if len(new) > 1:
                recorder.bad.append("%s: %d events from one call" % (node.id, len(new)))
            elif new:
                kind, role, term, leader, _reason, _was = new[0]
                if kind not in ("role", "term") or (role, term, leader) != (
                    node.role,
                    node.term,
                    node.leader,
                ):
                    recorder.bad.append("%s: event %r, role %d" % (node.id, new[0], node.role))

        def receiving(node: Node, msg: Msg, now: int) -> None:
            count = len(node.events)
            receive(node, msg, now)
            one_event(node, count)

        def ticking(node: Node, now: int) -> None:
            count = len(node.events)
            tick(node, now)
            one_event(node, count)

        monkeypatch.setattr(Node, "receive", receiving)
        monkeypatch.setattr(Node, "tick", ticking)


def random_run(seed: int, quorum: bool) -> None:
    """A mesh of 3..7 nodes under random faults for a simulated minute."""
    rng = Prng(seed)
    count = 3 + rng.below(5)
    # Every other mesh probes a silent leader before suspecting it (election.probes).
    config = Config(heartbeat_ms=100, quorum=count if quorum else 0, probes=2 * (seed % 2))
    mesh = Mesh(config, seed=seed)
    ids = ["n%d" % i for i in range(count)]
    for node_id in ids:
        mesh.add(node_id, battery=rng.below(1001), link=500 + rng.below(501))
    for node_id in ids:
        mesh.start(node_id)
    now = 0
    while now < 60000:
        now += 50 + rng.below(700)
        mesh.run_until(now)
        victim = ids[rng.below(count)]
        action = rng.below(12)
        if action == 0:
            mesh.crash(victim)
        elif action == 1:
            mesh.stop(victim)
        elif action in (2, 3):
            mesh.start(victim)
        elif action == 4:
            mesh.set_power(victim, battery=rng.below(1001), mains=rng.below(4) == 0)
        elif action == 5:
            mesh.set_power(victim, eligible=rng.below(3) != 0)
        elif action == 6:
            cut = 1 + rng.below(count - 1)
            mesh.partition([ids[:cut], ids[cut:]])
        elif action == 7:
            mesh.heal()
        elif action == 8:
            mesh.set_loss(rng.below(300), per_frame=rng.below(2) == 0)
        elif action == 9:
            mesh.set_loss(0)


def test_simulated_meshes_never_leave_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    for seed in range(40):
        random_run(seed, quorum=seed % 4 == 3)
    assert not recorder.bad, recorder.bad[:10]
    cells = [(r, e) for r in LIVE_ROLES for e in range(len(EVENTS)) if MACHINE[r][2 * e]]
    missed = [
        "%s / %s" % (ROLE_NAMES[r], EVENTS[e]) for r, e in cells if (r, e) not in recorder.seen
    ]
    print("cells run: %d of %d; never: %s" % (len(cells) - len(missed), len(cells), missed))
    # Every cell with a handler runs in these meshes (a leader named as successor too).
    assert not missed, missed


def test_one_call_one_event_the_net_change() -> None:
    """A follower whose leader leaves, and that ranks first, suspects and claims in the same
    call: one event, follower -> candidate, with the new term."""
    node = Node("b", Config(heartbeat_ms=100))
    node.start(0)
    assert node.events == [("role", ROLE_FOLLOWER, 0, None, None, ROLE_DOWN)]
    del node.events[:]
    leader_hb = Msg(HEARTBEAT, "a", 1, F_LEADER, 500, 0, 500, 500)
    node.receive(leader_hb, 10)
    assert node.events == [("role", ROLE_FOLLOWER, 1, "a", None, ROLE_FOLLOWER)]
    del node.events[:]
    node.receive(leader_hb, 20)  # nothing moved: no event
    assert node.events == []
    node.receive(Msg(LEAVE, "a", 1), 30)
    assert node.events == [("role", ROLE_CANDIDATE, 2, None, None, ROLE_FOLLOWER)]
    del node.events[:]
    node.tick(30 + node.config.claim_slot_ms)
    assert node.events == [("role", ROLE_LEADER, 2, "b", "shutdown", ROLE_CANDIDATE)]


def test_the_follower_phases_and_their_deadlines() -> None:
    cfg = Config(heartbeat_ms=100)
    node = Node("c", cfg)
    node.set_power(300, 300)  # ranks below "a"
    node.start(0)
    assert PHASES[node.phase(0)] == "listening" and node.wakeup <= cfg.listen_ms
    # A peer reports it heard a leader of term 0 just now: wait for it, do not claim.
    node.receive(Msg(HEARTBEAT, "a", 0, 0, 900, 0, 900, 900), cfg.listen_ms)
    now = cfg.listen_ms + 1
    node.tick(now)
    assert PHASES[node.phase(now)] == "suspecting"
    assert node.wakeup == min(node._next_hb, cfg.listen_ms + cfg.suspect_ms + 1)
    # The evidence runs out: claiming, rank 1 (below "a"), so one slot later.
    now = cfg.listen_ms + cfg.suspect_ms + 1
    node.receive(Msg(HEARTBEAT, "a", 0, 0, 900, HEARD_NONE, 900, 900), now)
    node.tick(now)
    assert PHASES[node.phase(now)] == "claiming"
    assert node.wakeup == min(node._next_hb, now + cfg.claim_slot_ms)
    node.receive(Msg(HEARTBEAT, "a", 1, F_LEADER, 900, 0, 900, 900), now + 5)
    assert PHASES[node.phase(now + 5)] == "following" and node.leader == "a"
