"""Check replay output against the rules of docs/replay.md.

Used by the replay tests (on both runtimes' output) and the property tests. Everything here
reads only the printed lines, so it checks what a user of the replay tool sees.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.replay import Replay
from agent.core.score import compute_score

ROLES = ("leader", "follower", "candidate", "down")
CHANGE_RE = re.compile(r"^(\d+) (\S+) (leader|follower|candidate|down) (\d+) (\S+)$")
FINAL_RE = re.compile(r"^final (\S+) (leader|follower|candidate|down) (\d+) (\S+)$")
STATS_RE = re.compile(r"^stats messages=(\d+) dropped=(\d+) elections=(\d+)$")


@dataclass
class View:
    role: str
    term: int
    leader: str | None


@dataclass
class Output:
    changes: list[tuple[int, str, View]] = field(default_factory=list)
    end: int = 0
    finals: dict[str, View] = field(default_factory=dict)
    messages: int = 0
    dropped: int = 0
    elections: int = 0

    def view_at(self, t: int) -> dict[str, View]:
        """Each node's view after every change at or before t."""
        views: dict[str, View] = {}
        for at, node, view in self.changes:
            if at > t:
                break
            views[node] = view
        return views


def run_replay(scenario: dict) -> list[str]:
    lines: list[str] = []
    Replay(scenario, lines.append).run()
    return lines


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def parse(lines: list[str]) -> Output:
    """Parse replay output, asserting the grammar of every line and the order of changes."""
    out = Output()
    state = "changes"
    last = (-1, "")
    for line in lines:
        if line.startswith("#"):
            continue
        assert "." not in line.split()[0], "no floats: %r" % line
        if state == "changes":
            m = CHANGE_RE.match(line)
            if m:
                at, node = int(m[1]), m[2]
                assert (at, node) >= last, "changes out of order at %r" % line
                last = (at, node)
                leader = None if m[5] == "-" else m[5]
                out.changes.append((at, node, View(m[3], int(m[4]), leader)))
                continue
            assert line.startswith("end "), "bad line %r" % line
            out.end = int(line.split()[1])
            state = "finals"
            continue
        if state == "finals":
            m = FINAL_RE.match(line)
            if m:
                out.finals[m[1]] = View(m[2], int(m[3]), None if m[4] == "-" else m[4])
                continue
            m = STATS_RE.match(line)
            assert m, "bad line %r" % line
            out.messages, out.dropped, out.elections = int(m[1]), int(m[2]), int(m[3])
            state = "done"
            continue
        raise AssertionError("line after stats: %r" % line)
    assert state == "done", "output incomplete"
    assert list(out.finals) == sorted(out.finals), "final lines must be sorted by id"
    return out


def check_safety(out: Output) -> None:
    """Rules that must hold at every moment, whatever the scenario."""
    # Terms only grow within one boot (a restart is a fresh boot: down, then term 0 again).
    term: dict[str, int] = {}
    for at, node, view in out.changes:
        if view.role == "down":
            term.pop(node, None)
            continue
        if node in term:
            assert view.term >= term[node], "%s: term went down at %d" % (node, at)
        term[node] = view.term
        if view.role == "leader":
            assert view.leader == node, "a leader follows itself (%s at %d)" % (node, at)
        if view.role == "candidate":
            assert view.leader is None, "a candidate follows nobody (%s at %d)" % (node, at)


def leaders_by_term(out: Output) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = {}
    for _, node, view in out.changes:
        if view.role == "leader":
            seen.setdefault(view.term, set()).add(node)
    return seen


def score_of(spec: dict) -> int:
    return compute_score(
        spec.get("battery", 1000),
        spec.get("link", 1000),
        spec.get("mains", False),
        spec.get("eligible", True),
    )


def best_node(specs: list[dict]) -> str:
    eligible = [s for s in specs if s.get("eligible", True)]
    return sorted(eligible, key=lambda s: (-score_of(s), s["id"]))[0]["id"]


def assert_settled(views: dict[str, View], members: list[str], leader: str | None, at: int) -> str:
    """Exactly one leader among the live members, and every live member follows it."""
    live = [n for n in members if n in views and views[n].role != "down"]
    assert live, "no live node at %d" % at
    leaders = [n for n in live if views[n].role == "leader"]
    assert len(leaders) == 1, "at %d: leaders %r among %r" % (at, leaders, live)
    for n in live:
        assert views[n].leader == leaders[0], "at %d: %s follows %r, not %s" % (
            at,
            n,
            views[n].leader,
            leaders[0],
        )
        assert views[n].term == views[leaders[0]].term, "at %d: %s in another term" % (at, n)
    if leader is not None:
        assert leaders[0] == leader, "at %d: %s leads, expected %s" % (at, leaders[0], leader)
    return leaders[0]


def check_expectations(scenario: dict, out: Output) -> None:
    """The scenario's own "expect" entries (an extension used by tests/scenarios only)."""
    ids = [n["id"] for n in scenario["nodes"]]
    for exp in scenario.get("expect", []):
        at = exp["at"]
        views = out.view_at(at)
        groups = exp.get("groups", [ids])
        wanted = exp.get("leaders", [exp.get("leader")] * len(groups))
        for group, leader in zip(groups, wanted, strict=True):
            chosen = assert_settled(views, group, leader, at)
            if "term_above" in exp:
                assert views[chosen].term > exp["term_above"], "at %d: term not new" % at
        for n in exp.get("leaderless", []):
            assert views[n].leader is None, "at %d: %s should have no leader (quorum)" % (at, n)
    if "max_elections" in scenario:
        assert out.elections <= scenario["max_elections"], "too many elections: %d" % (
            out.elections
        )
    for n in scenario.get("never_lead", []):
        assert all(not (node == n and v.role == "leader") for _, node, v in out.changes)
    if "no_gap_after" in scenario:
        gap_from = scenario["no_gap_after"]
        for at, node, view in out.changes:
            if at > gap_from and view.role != "down":
                assert view.leader is not None, "%s followed nobody at %d" % (node, at)
