"""The replay contract (docs/replay.md): same output on CPython and MicroPython, and decisions
that obey the rules.

Scenarios: every file in tests/scenarios; some add an "expect" section and other checks that
tests/corecheck.py applies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.mpy import run_micropython
from tests.corecheck import (
    Output,
    assert_settled,
    best_node,
    check_expectations,
    check_safety,
    leaders_by_term,
    load,
    parse,
    run_replay,
)
from tests.paths import REPO_ROOT
from tests.paths import SCENARIOS as SCENARIO_DIR

SCENARIOS = sorted(SCENARIO_DIR.glob("*.json"))
IDS = [p.stem for p in SCENARIOS]

# The failover bound: every live node follows a new leader within 1.5 s.
FAILOVER_BOUND_MS = 1500
SETTLE_MS = 3000


def derive_checkpoints(scenario: dict) -> list[tuple[int, list[list[str]], str | None]]:
    """From the steps alone: when the mesh must be settled, in which groups, led by whom.

    After a start, the best eligible live node leads (checked once the mesh had SETTLE_MS);
    after a crash, stop, partition or heal, each group settles on one leader within
    FAILOVER_BOUND_MS (or SETTLE_MS for a partition or heal), if the next step leaves time.
    """
    specs = {n["id"]: dict(n) for n in scenario["nodes"]}
    live: set[str] = set()
    groups: list[list[str]] | None = None
    points = []
    steps = scenario["steps"]
    for i, step in enumerate(steps[:-1]):
        op = step["op"]
        ids = step.get("nodes") or ([step["node"]] if "node" in step else [])
        if op in ("start", "restart"):
            live |= set(ids)
        elif op in ("crash", "stop"):
            live -= set(ids)
        elif op == "set":
            for n in ids:
                specs[n].update({k: v for k, v in step.items() if k not in ("at", "op", "node")})
        elif op == "partition":
            groups = step["groups"]
        elif op == "heal":
            groups = None
        wait = FAILOVER_BOUND_MS if op in ("crash", "stop") else SETTLE_MS
        at = step["at"] + wait
        if op in ("set", "loss") or at >= steps[i + 1]["at"] or not live:
            continue
        parts = [sorted(live)] if groups is None else [sorted(live & set(g)) for g in groups]
        parts = [p for p in parts if p]
        best = best_node([specs[n] for n in live]) if op == "start" and groups is None else None
        points.append((at, parts, best))
    return points


def replay_text(path: Path) -> str:
    return "\n".join(run_replay(load(path))) + "\n"


@pytest.mark.parametrize("path", SCENARIOS, ids=IDS)
def test_replay_obeys_the_rules(path: Path) -> None:
    scenario = load(path)
    out: Output = parse(run_replay(scenario))
    check_safety(out)
    for at, parts, best in derive_checkpoints(scenario):
        views = out.view_at(at)
        for part in parts:
            if scenario.get("quorum") and len(part) < scenario["quorum"] // 2 + 1:
                continue  # a minority under quorum mode has no leader, by design
            assert_settled(views, part, best, at)
    check_expectations(scenario, out)
    # Never two leaders in one term, on a mesh that was never split.
    if not any(s["op"] == "partition" for s in scenario["steps"]):
        for term, who in leaders_by_term(out).items():
            assert len(who) == 1, "term %d had leaders %r" % (term, who)


@pytest.mark.micropython
@pytest.mark.parametrize("path", SCENARIOS, ids=IDS)
def test_replay_is_identical_on_micropython(path: Path) -> None:
    expected = replay_text(path)
    result = run_micropython(None, str(path), module="agent.core.replay", timeout=120)
    assert result.rc == 0, result.stdout[-2000:]
    assert result.stdout == expected


def test_the_scenarios_are_all_there() -> None:
    # A glob that finds nothing would run no scenario test at all, silently.
    assert {"three-nodes-crash", "partition-then-stop", "crash", "sixty-nodes"} <= set(IDS)


def test_replay_command_line_matches_in_process() -> None:
    path = SCENARIO_DIR / "three-nodes-crash.json"
    done = subprocess.run(
        [sys.executable, "-m", "agent.core.replay", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == replay_text(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"nodes": [], "steps": []}', "'nodes' must be a non-empty list"),
        (
            '{"nodes": [{"id": "a"}], "steps": [{"at": 0, "op": "start", "node": "b"}]}',
            "unknown node",
        ),
        ('{"nodes": [{"id": "a", "battery": 1.5}], "steps": [{"at": 0, "op": "end"}]}', "integer"),
        (
            '{"heartbeat_ms": 5, "nodes": [{"id": "a"}], "steps": [{"at": 0, "op": "end"}]}',
            "scenario: heartbeat_ms: must be an integer within 20..60000, got 5",
        ),
        ('{"nodes": [{"id": "a"}], "steps": [{"at": 0, "op": "start", "node": "a"}]}', "'end'"),
        (
            '{"nodes": [{"id": "a"}], "steps": [{"at": 5, "op": "fly"}, {"at": 9, "op": "end"}]}',
            "unknown op",
        ),
    ],
)
def test_broken_scenarios_get_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "agent.core.replay", str(bad)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "error:" in done.stdout
    assert message in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
