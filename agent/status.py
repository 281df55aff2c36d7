"""`meshelect status`: the mesh as this node sees it, from the status file the agent keeps.

The agent rewrites `<state_dir>/status.json` (atomically) every `status_ms` when anything that
matters changed (role, term, leader, peers, buffer, counters, ...), and at least every
`REFRESH_MS` otherwise, so figures that move on every heartbeat (`updated`, `clock_ms`, peers'
`age_ms`, frame and send totals) can be up to that old. This command reads it, so it works
without any socket or privileges beyond reading the state dir.

A peer the agent has not heard for longer than the suspect time (`suspect_intervals`
heartbeats) is in the status's `stale_peers` list (the core's rule, agent/core/app.py, so a board's
status says the same) and shown as `stale (was leader)`, not as a leader with a large age. A
change of that list is a change that matters: the file says so within `status_ms`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from agent.config import ConfigError, load_config

STATUS_FILE = "status.json"
STALE_AFTER_S = 5.0
# An unchanged status is still rewritten this often: `updated` must stay well within
# STALE_AFTER_S of now, or `meshelect status` would call a healthy agent stale.
REFRESH_MS = 2000
# Figures that move on every heartbeat or loop turn: alone, they do not make the file worth
# rewriting before REFRESH_MS (rewriting it twice a second was a third of an idle agent's CPU).
_MOVING_TOP = ("updated", "clock_ms")
_MOVING_STATS = ("sent", "frames_in", "loop_turns")
_MOVING_TRANSPORT = ("sent", "received")
_ROW = "{:<16} {:>6} {:>7} {:>5} {:>5} {:>8}  {}"


def status_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATUS_FILE)


def write_status(state_dir: str, status: dict[str, Any]) -> None:
    """Write atomically: readers never see half a file."""
    path = status_path(state_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, path)


def settled_view(status: dict[str, Any]) -> dict[str, Any]:
    """The status without the figures that move all the time: compare two of these to tell
    whether anything worth rewriting the file for has changed."""
    view = {k: v for k, v in status.items() if k not in _MOVING_TOP}
    if isinstance(view.get("peers"), list):
        view["peers"] = [
            {k: v for k, v in peer.items() if k != "age_ms"} if isinstance(peer, dict) else peer
            for peer in view["peers"]
        ]
    for key, moving in (("stats", _MOVING_STATS), ("transport", _MOVING_TRANSPORT)):
        if isinstance(view.get(key), dict):
            view[key] = {k: v for k, v in view[key].items() if k not in moving}
    return view


def read_status(state_dir: str) -> dict[str, Any] | None:
    try:
        with open(status_path(state_dir)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _row(*values: Any) -> str:
    return _ROW.format(*(str(v) for v in values))


def _flags_text(flags: int) -> str:
    names = ((1, "leader"), (2, "candidate"), (4, "mains"), (8, "low-battery"), (16, "leaving"))
    return ",".join(name for bit, name in names if flags & bit) or "-"


def _peer_text(flags: int, stale: bool) -> str:
    """A stale peer's flags are what it said before it fell silent: shown as the past."""
    text = _flags_text(flags)
    if not stale:
        return text
    return "stale" if text == "-" else "stale (was %s)" % text


def render(status: dict[str, Any], now: float) -> str:
    age = now - float(status.get("updated", 0))
    lines = [
        "node {}  mesh {}  role {}  term {}  leader {}".format(
            status.get("node"),
            status.get("mesh"),
            status.get("role"),
            status.get("term"),
            status.get("leader") or "-",
        ),
        "boot {}  score {}  battery {}  link {}  transport {}  pid {}  updated {:.1f}s ago{}".format(
            status.get("boot"),
            status.get("score"),
            status.get("battery"),
            status.get("link"),
            (status.get("transport") or {}).get("transport"),
            status.get("pid"),
            age,
            "  (STALE: agent not running?)" if age > STALE_AFTER_S else "",
        ),
    ]
    buffer = status.get("buffer") or {}
    lines.append(
        "buffer depth {}  taken {}  dropped {}  gateway {}".format(
            buffer.get("depth"),
            buffer.get("taken"),
            buffer.get("dropped"),
            status.get("gateway") or "-",
        )
    )
    peers = status.get("peers") or []
    stale = set(status.get("stale_peers") or ())
    lines.append("")
    lines.append(_row("peer", "score", "battery", "link", "term", "age_ms", "flags"))
    for peer in peers:
        lines.append(
            _row(
                peer.get("id"),
                peer.get("score"),
                peer.get("battery"),
                peer.get("link"),
                peer.get("term"),
                peer.get("age_ms"),
                _peer_text(int(peer.get("flags", 0)), peer.get("id") in stale),
            )
        )
    if not peers:
        lines.append("(no peers heard)")
    drops = status.get("drops") or {}
    if drops:
        lines.append("")
        lines.append("dropped frames: " + ", ".join(f"{k}={drops[k]}" for k in sorted(drops)))
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshelect status", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="agent TOML config (for its state_dir)")
    parser.add_argument("--state-dir", help="the agent's state directory")
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    args = parser.parse_args(argv)
    state_dir = args.state_dir
    if state_dir is None:
        try:
            state_dir = load_config(args.config).state_dir
        except ConfigError as exc:
            print(f"meshelect status: {exc}", file=sys.stderr)
            return 2
    status = read_status(state_dir)
    if status is None:
        print(
            f"meshelect status: no status in {state_dir} (is the agent running?)", file=sys.stderr
        )
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render(status, time.time()))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
