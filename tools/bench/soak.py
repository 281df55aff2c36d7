"""`meshelect bench soak`: a real mesh under steady packet loss; does it hold its leader?

N agent processes, one per network namespace (root), and the real gateway on one more. Once
a leader is agreed, every host (agents and gateway) loses ``--loss`` % of the frames it sends,
for ``--minutes``; then the loss ends and the readings settle. Prints, every ``--report-s``
and at the end: the elections seen (new terms, each with its leader and reason, from the
agents' logs), the suspicions (a follower gave up on its leader, even if it heard it again
before anyone claimed: the near misses), and the readings taken, stored, lost and arrived
twice. The load average is printed too: on a busy machine an agent that is not scheduled for
a few heartbeats looks dead to its peers whatever the loss.

Loss shapes (nftables rules on the lab's bridge, tools that every kernel here has): per link
(default; each receiver's copy of a multicast frame is dropped on its own, like fading on each
path) or ``--per-frame`` (a frame is lost for every receiver at once, like a sender's radio
losing it). The second is the harder case for failure detection: a follower's peers cannot
have heard a heartbeat that it missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from testkit.meshlab import MeshUnderTest, parse_log_time
from testkit.tools import MissingTool
from tools.bench.failover import (
    add_election_options,
    election_summary,
    heartbeat_list,
    new_mesh,
    readings_report,
    start_agents,
)

LAB_PREFIX = "mk-"


def _stats(mesh: MeshUnderTest) -> dict[int, dict[str, Any]]:
    return {host: status.get("stats") or {} for host, status in mesh.statuses().items()}


def _max_term(mesh: MeshUnderTest) -> int:
    return max((int(s.get("term") or 0) for s in mesh.statuses().values()), default=0)


def elections_since(mesh: MeshUnderTest, term: int, since: float) -> list[tuple[int, str, str]]:
    """(term, leader, reason) of every leadership above ``term`` begun after ``since`` (wall
    time), from the agents' logs, by term."""
    found: dict[int, tuple[int, str, str]] = {}
    for host in sorted(mesh.procs):
        for event in mesh.agent_events(host):
            if event.get("event") != "role_changed" or event.get("role") != "leader":
                continue
            led = int(event.get("term") or 0)
            if led > term and parse_log_time(str(event.get("ts", ""))) >= since:
                found.setdefault(led, (led, str(event.get("leader")), str(event.get("reason"))))
    return [found[t] for t in sorted(found)]


def _sum(stats: dict[int, dict[str, Any]], name: str) -> int:
    return sum(int(s.get(name) or 0) for s in stats.values())


def soak(args: argparse.Namespace) -> int:
    n = args.agents
    mesh = new_mesh(args, args.heartbeat_ms, LAB_PREFIX)
    try:
        leader = start_agents(mesh)
        if leader is None:
            return 1
        time.sleep(2 * args.heartbeat_ms / 1000 + 1)  # the status files settle
        start_term = _max_term(mesh)
        start_stats = _stats(mesh)
        shape = "per frame" if args.per_frame else "per link"
        print(
            "soak: %d agents, heartbeat %d ms, %s, %d%% loss %s on every host, "
            "%.1f min; leader %s term %d"
            % (
                n,
                args.heartbeat_ms,
                election_summary(args),
                args.loss,
                shape,
                args.minutes,
                leader,
                start_term,
            ),
            flush=True,
        )
        started = time.time()
        frames_before = sum(mesh.lab.frames_sent().values())
        for host in mesh.lab.hosts:
            mesh.lab.loss(host, args.loss, per_frame=args.per_frame)
        end = time.monotonic() + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(max(0.0, min(args.report_s, end - time.monotonic())))
            stats = _stats(mesh)
            print(
                "  %5.0f s: elections %d  suspicions %d  leader %s  load %.1f"
                % (
                    time.time() - started,
                    len(elections_since(mesh, start_term, started)),
                    _sum(stats, "suspicions") - _sum(start_stats, "suspicions"),
                    mesh.agreed_leader() or "-",
                    os.getloadavg()[0],
                ),
                flush=True,
            )
            if len(mesh.alive()) < n:
                print("an agent died: %s" % sorted(set(mesh.procs) - set(mesh.alive())))
                return 1
        elapsed = time.time() - started
        frames = sum(mesh.lab.frames_sent().values()) - frames_before
        for host in mesh.lab.hosts:
            mesh.lab.loss(host, 0)
        elections = elections_since(mesh, start_term, started)
        stats = _stats(mesh)
        time.sleep(args.settle_s)
        report = readings_report(mesh, {})
    finally:
        mesh.close()
        mesh.cleanup()
    print()
    print(
        "soak over udp, %d agents, heartbeat %d ms, %s, %d%% loss %s, %.1f min, %.0f frames/s "
        "sent"
        % (
            n,
            args.heartbeat_ms,
            election_summary(args),
            args.loss,
            shape,
            elapsed / 60,
            frames / elapsed,
        )
    )
    print("  elections seen: %d" % len(elections))
    for term, who, reason in elections:
        print("    term %d: %s (%s)" % (term, who, reason))
    print(
        "  suspicions (a follower gave up on its leader): %d"
        % (_sum(stats, "suspicions") - _sum(start_stats, "suspicions"))
    )
    print(
        "  readings: taken %(taken)d  stored %(stored)d  lost %(lost)d  "
        "in flight at end %(in_flight_at_end)d  duplicate arrivals (stored once; -1: unknown) "
        "%(duplicate_arrivals)d" % report
    )
    print("  load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    return 0


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="meshelect bench soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--agents", type=int, default=5, help="(default: %(default)s)")
    p.add_argument(
        "--heartbeat-ms",
        type=lambda text: heartbeat_list(text)[0],
        default=50,
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--loss", type=int, default=10, help="percent of frames dropped (default: %(default)s)"
    )
    p.add_argument("--per-frame", action="store_true", help="lose a frame for every receiver")
    add_election_options(p)
    p.add_argument("--minutes", type=float, default=10.0, help="(default: %(default)s)")
    p.add_argument("--sample-ms", type=int, default=500, help="(default: %(default)s)")
    p.add_argument("--status-ms", type=int, default=250, help="(default: %(default)s)")
    p.add_argument(
        "--report-s", type=float, default=60.0, help="progress line every (default: %(default)s)"
    )
    p.add_argument("--settle-s", type=float, default=8.0, help="(default: %(default)s)")
    args = p.parse_args(argv)
    if not 0 <= args.loss <= 100 or args.agents < 2 or args.minutes <= 0:
        print("meshelect bench soak: --loss 0..100, --agents >= 2, --minutes > 0", file=sys.stderr)
        return 2
    try:
        return soak(args)
    except MissingTool as exc:
        print("meshelect bench soak: missing %s" % exc, file=sys.stderr)
        return 2
