"""`meshelect status`: the mesh as this node sees it, from the status file the agent keeps.

The agent rewrites `<state_dir>/status.json` (atomically) a few times a second; this command
reads it, so it works without any socket or privileges beyond reading the state dir.
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
                _flags_text(int(peer.get("flags", 0))),
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
