"""The election as an explicit machine: the role x event table in agent/core/node.py is the one
in docs/design.md, and what simulated meshes do never leaves it.

The table's "may become" column is a claim about the code; the random meshes below (crashes,
restarts, graceful stops, partitions, loss, power changes, with and without quorum) check it
on every call, and that the core's view events say exactly where each call left the node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from agent.core import node as core
from agent.core.mesh import Mesh
from agent.core.node import (
    EV_ROLE,
    EV_TERM,
    MACHINE,
    ON_CLAIM,
    ON_HANDOFF,
    ON_LEADER_BEAT,
    ON_LEAVE,
    ON_OTHER_BEAT,
    ON_REPORT,
    ON_TICK,
    PHASE_CLAIMING,
    PHASE_FOLLOWING,
    PHASE_LISTENING,
    PHASE_SUSPECTING,
    ROLE_CANDIDATE,
    ROLE_DOWN,
    ROLE_FOLLOWER,
    ROLE_LEADER,
    ROLE_NAMES,
    Config,
    Node,
)
from agent.core.prng import Prng
from tests.helpers.tools import REPO_ROOT

# The doc's names for the events (the columns of MACHINE).
EVENTS = {
    "leader heartbeat": ON_LEADER_BEAT,
    "report": ON_REPORT,
    "other heartbeat": ON_OTHER_BEAT,
    "claim": ON_CLAIM,
    "handoff": ON_HANDOFF,
    "leave": ON_LEAVE,
    "tick": ON_TICK,
}
ROLES = {name: role for role, name in enumerate(ROLE_NAMES)}
LIVE_ROLES = (ROLE_FOLLOWER, ROLE_CANDIDATE, ROLE_LEADER)

Cell = tuple[str, frozenset[int]]  # (handler name or "-", roles it may lead to)


def doc_table() -> dict[tuple[int, int], Cell]:
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    section = text.split("### The election as a machine", 1)[1].split("\n#", 1)[0]
    cells: dict[tuple[int, int], Cell] = {}
    for line in section.splitlines():
        columns = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(columns) != 5 or columns[0] not in ROLES:
            continue
        role, event, handler, _what, after = columns
        key = (ROLES[role], EVENTS[event])
        assert key not in cells, "row twice in the doc: %s / %s" % (role, event)
        roles = frozenset(ROLES[name.strip()] for name in after.split(","))
        cells[key] = (handler.strip("`"), roles)
    return cells


def code_table() -> dict[tuple[int, int], Cell]:
    cells: dict[tuple[int, int], Cell] = {}
    for role in LIVE_ROLES:
        row = MACHINE[role]
        assert len(row) == len(EVENTS)
        for event, (handler, mask) in enumerate(row):
            roles = frozenset(r for r in LIVE_ROLES if mask & (1 << r))
            cells[(role, event)] = (handler.__name__ if handler else "-", roles)
    return cells


def test_the_design_doc_shows_the_machine_of_the_code() -> None:
    assert MACHINE[ROLE_DOWN] is None  # a down node ignores everything until start()
    doc, code = doc_table(), code_table()
    assert len(code) == 3 * len(EVENTS)
    for key in sorted(code.keys() | doc.keys()):
        where = "%s / %s" % (ROLE_NAMES[key[0]], key[1])
        assert doc.get(key) == code.get(key), where


def test_every_handler_named_in_the_table_is_a_method_of_node() -> None:
    for handler, _ in code_table().values():
        if handler != "-":
            assert callable(getattr(Node, handler))
    # The doc names the phases the code computes, in one table.
    text = (REPO_ROOT / "docs" / "design.md").read_text()
    for name in ("following", "listening", "suspecting", "claiming"):
        assert re.search(r"^\| %s \|" % name, text, re.M), name
    assert sorted((PHASE_LISTENING, PHASE_FOLLOWING, PHASE_SUSPECTING, PHASE_CLAIMING)) == [
        0,
        1,
        2,
        3,
    ]


class Recorder:
    """Wraps Node.receive and Node.tick: every call's (role before, event, role after)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], int] = {}
        self.bad: list[str] = []

    def check(self, node: Node, before: int, event: int, events_before: int) -> None:
        after = node.role
        self.seen[(before, event)] = self.seen.get((before, event), 0) + 1
        mask = MACHINE[before][event][1]
        if not mask & (1 << after):
            self.bad.append(
                "%s: %s + %d -> %s" % (node.id, ROLE_NAMES[before], event, ROLE_NAMES[after])
            )
        new = node.events[events_before:]
        if len(new) > 1:
            self.bad.append("%s: %d events from one call" % (node.id, len(new)))
        if new:
            kind, role, term, leader, _reason, _was = new[0]
            assert kind in (EV_ROLE, EV_TERM)
            if (role, term, leader) != node.view():
                self.bad.append("%s: event %r, view %r" % (node.id, new[0], node.view()))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        receive, tick, book = Node.receive, Node.tick, Node._book
        recorder = self

        def booking(self: Any, msg: Any, now: int) -> int:
            event: int = book(self, msg, now)
            self._event_seen = event
            return event

        def receiving(self: Any, msg: Any, now: int) -> None:
            before, count = self.role, len(self.events)
            self._event_seen = -1
            receive(self, msg, now)
            if before != ROLE_DOWN and self._event_seen >= 0:
                recorder.check(self, before, self._event_seen, count)

        def ticking(self: Any, now: int) -> None:
            before, count = self.role, len(self.events)
            tick(self, now)
            if before != ROLE_DOWN:
                recorder.check(self, before, ON_TICK, count)

        monkeypatch.setattr(Node, "_book", booking)
        monkeypatch.setattr(Node, "receive", receiving)
        monkeypatch.setattr(Node, "tick", ticking)


def random_run(seed: int, quorum: bool) -> Iterator[None]:
    """A mesh of 3..7 nodes under random faults for a simulated minute, one step per yield."""
    rng = Prng(seed)
    count = 3 + rng.below(5)
    mesh = Mesh(Config(heartbeat_ms=100, quorum=count if quorum else 0), seed=seed)
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
            mesh.set_loss(rng.below(300))
        elif action == 9:
            mesh.set_loss(0)
        yield


def test_simulated_meshes_never_leave_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    for seed in range(40):
        for _ in random_run(seed, quorum=seed % 4 == 3):
            pass
    assert not recorder.bad, recorder.bad[:10]
    cells = [(r, e) for r in LIVE_ROLES for e in range(len(EVENTS)) if MACHINE[r][e][0]]
    missed = [
        "%s / %s" % (ROLE_NAMES[r], name)
        for (r, e) in cells
        for name, ev in EVENTS.items()
        if ev == e and (r, e) not in recorder.seen
    ]
    print("cells exercised: %d of %d; never: %s" % (len(cells) - len(missed), len(cells), missed))
    # Every cell with a handler runs in these meshes (a leader named as successor included).
    assert not missed, missed


def test_one_call_one_event_the_net_change() -> None:
    """A follower whose leader leaves, and that ranks first, suspects and claims in the same
    call: one event, follower -> candidate, with the new term."""
    node = Node("b", Config(heartbeat_ms=100))
    node.start(0)
    assert node.events == [(EV_ROLE, ROLE_FOLLOWER, 0, None, None, ROLE_DOWN)]
    del node.events[:]
    leader_hb = core.Msg(core.HEARTBEAT, "a", 1, core.F_LEADER, 500, 0, 500, 500)
    node.receive(leader_hb, 10)
    assert node.events == [(EV_ROLE, ROLE_FOLLOWER, 1, "a", None, ROLE_FOLLOWER)]
    del node.events[:]
    node.receive(leader_hb, 20)  # nothing moved: no event
    assert node.events == []
    node.receive(core.Msg(core.LEAVE, "a", 1), 30)
    assert node.events == [(EV_ROLE, ROLE_CANDIDATE, 2, None, None, ROLE_FOLLOWER)]
    del node.events[:]
    node.tick(30 + node.config.claim_slot_ms)
    assert node.events == [(EV_ROLE, ROLE_LEADER, 2, "b", "shutdown", ROLE_CANDIDATE)]


def test_the_follower_phases_and_their_deadlines() -> None:
    cfg = Config(heartbeat_ms=100)
    node = Node("c", cfg)
    node.set_power(300, 300)  # ranks below "a"
    node.start(0)
    assert node.phase(0) == PHASE_LISTENING and node.wakeup <= cfg.listen_ms
    # A peer reports it heard a leader of term 0 just now: wait for it, do not claim.
    node.receive(core.Msg(core.HEARTBEAT, "a", 0, 0, 900, 0, 900, 900), cfg.listen_ms)
    now = cfg.listen_ms + 1
    node.tick(now)
    assert node.phase(now) == PHASE_SUSPECTING
    assert node.wakeup == min(node._next_hb, cfg.listen_ms + cfg.suspect_ms + 1)
    # The evidence runs out: claiming, rank 1 (below "a"), so one slot later.
    now = cfg.listen_ms + cfg.suspect_ms + 1
    node.receive(core.Msg(core.HEARTBEAT, "a", 0, 0, 900, core.HEARD_NONE, 900, 900), now)
    node.tick(now)
    assert node.phase(now) == PHASE_CLAIMING
    assert node._deadline(PHASE_CLAIMING) == now + cfg.claim_slot_ms
    node.receive(core.Msg(core.HEARTBEAT, "a", 1, core.F_LEADER, 900, 0, 900, 900), now + 5)
    assert node.phase(now + 5) == PHASE_FOLLOWING and node.leader == "a"
