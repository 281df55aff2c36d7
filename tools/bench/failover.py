"""`meshelect bench failover`: kill -9 the leader of a real mesh, again and again.

N agent processes, one per network namespace (root), the real gateway (`python -m gateway`)
on one more namespace, for MQTT a Mosquitto beside it, then M kill -9 of whoever leads. Prints
the failover time (median, p99) from the kill to every member following the new leader and to
the first batch the gateway accepts from it, the readings taken vs stored (from the gateway's
database and /metrics), and CPU and memory per agent while idle.

The lab's namespaces carry this process's pid: a bench never touches the labs of a test run
or of another bench, whatever their prefix.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from typing import Any

from testkit.meshlab import MeshUnderTest, boot_progress, delivery_report, parse_log_time
from testkit.tools import MissingTool
from tools.bench.usage import measure, percentile

LAB_PREFIX = "mb-"  # the tests' meshes use "ma-"; the pid tag keeps runs apart either way

# ---------------------------------------------------------------------------- failover bench


def failover(args: argparse.Namespace) -> int:
    n = args.agents
    if n < 2:
        print("need at least 2 agents", file=sys.stderr)
        return 2
    follow_times: list[float] = []
    batch_times: list[float] = []
    killed_boots: dict[tuple[str, int], tuple[int, int]] = {}
    mesh = MeshUnderTest(
        n,
        args.transport,
        heartbeat_ms=args.heartbeat_ms,
        prefix=LAB_PREFIX,
        sample_ms=args.sample_ms,
        status_ms=args.status_ms,
    )
    try:
        mesh.open()
        # Close batteries (within the hysteresis margin): a restarted node does not take the
        # lead back, so each kill hits whoever leads now.
        for host in range(1, n + 1):
            mesh.start_agent(host, 950 - 10 * host)
        leader = mesh.wait_for(mesh.agreed_leader, 20)
        if leader is None:
            print("no leader agreed within 20 s", file=sys.stderr)
            return 1
        # Idle figures: CPU over a quiet window, then memory.
        hosts = mesh.alive()
        pids = [mesh.procs[h].pid for h in hosts]
        usage = dict(zip(hosts, measure(pids, args.idle_s), strict=True))
        for round_no in range(args.kills):
            leader = mesh.wait_for(mesh.agreed_leader, 20)
            if leader is None:
                print("round %d: no agreed leader" % round_no, file=sys.stderr)
                break
            victim = mesh.host_of(leader)
            kill_wall = time.time()
            mesh.kill(victim)
            boot, taken, confirmed = boot_progress(mesh.state_dir(victim))
            killed_boots[(leader, boot)] = (taken, confirmed)
            survivors = mesh.alive()
            new_leader = mesh.wait_for(partial(_new_leader, mesh, survivors, leader), 20)
            if new_leader is None or new_leader == leader:
                print("round %d: no new leader" % round_no, file=sys.stderr)
                break
            follow = _last_follow_time(mesh, survivors, new_leader, kill_wall)
            first_batch = mesh.wait_for(partial(_first_batch, mesh, new_leader, kill_wall), 20)
            follow_times.append(follow - kill_wall)
            if first_batch is not None:
                batch_times.append(first_batch - kill_wall)
            print(
                "kill %2d: %s -> %s  follow %.0f ms  first batch %s"
                % (
                    round_no + 1,
                    leader,
                    new_leader,
                    (follow - kill_wall) * 1000,
                    "%.0f ms" % ((first_batch - kill_wall) * 1000) if first_batch else "none",
                ),
                flush=True,
            )
            mesh.start_agent(victim, mesh.batteries[victim])
            mesh.wait_for(partial(_has_status, mesh, victim), 10)
        # Let the last resends settle before counting.
        time.sleep(args.settle_s)
        report = delivery_report(mesh, killed_boots)
        counters = mesh.gateway_counters()
        report["duplicate_arrivals"] = int(counters.get("meshelect_gateway_dedup_hits_total", -1))
    finally:
        mesh.close()
        mesh.cleanup()
    _print_failover(args, follow_times, batch_times, report, usage)
    return 0 if follow_times else 1


def _has_status(mesh: MeshUnderTest, host: int) -> bool:
    return host in mesh.statuses()


def _new_leader(mesh: MeshUnderTest, hosts: list[int], old: str) -> str | None:
    leader = mesh.agreed_leader(hosts)
    return leader if leader != old else None


def _last_follow_time(mesh: MeshUnderTest, hosts: list[int], leader: str, since: float) -> float:
    """Wall time when the last of `hosts` started following `leader` (from their logs)."""
    latest = since
    for host in hosts:
        when = None
        for event in mesh.agent_events(host):
            if event.get("event") != "role_changed" or event.get("leader") != leader:
                continue
            stamp = parse_log_time(str(event.get("ts", "")))
            if stamp >= since - 0.001:
                when = stamp if when is None else min(when, stamp)
        if when is not None and when > latest:
            latest = when
    return latest


def _first_batch(mesh: MeshUnderTest, leader: str, since: float) -> float | None:
    """The gateway's clock when it accepted the first batch of ``leader`` after ``since``."""
    for batch in mesh.batches():
        if batch["leader"] == leader and batch["wall"] >= since:
            return float(batch["wall"])
    return None


def _print_failover(
    args: argparse.Namespace,
    follow: list[float],
    batch: list[float],
    report: dict[str, Any],
    usage: dict[int, tuple[float, int]],
) -> None:
    print()
    print(
        "failover over %s, %d agents, heartbeat %d ms, sample %d ms, %d kills"
        % (args.transport, args.agents, args.heartbeat_ms, args.sample_ms, len(follow))
    )
    if follow:
        print(
            "  kill -> all follow new leader: median %.0f ms  p99 %.0f ms  max %.0f ms"
            % (
                statistics.median(follow) * 1000,
                percentile(follow, 0.99) * 1000,
                max(follow) * 1000,
            )
        )
    if batch:
        print(
            "  kill -> first batch from new leader: median %.0f ms  p99 %.0f ms  (%d of %d)"
            % (
                statistics.median(batch) * 1000,
                percentile(batch, 0.99) * 1000,
                len(batch),
                len(follow),
            )
        )
    print(
        "  readings: taken %(taken)d  stored %(stored)d  lost %(lost)d  "
        "lost with kill -9 %(lost_with_kill)d  in flight at end %(in_flight_at_end)d  "
        "duplicate arrivals (deduped; -1: unknown) %(duplicate_arrivals)d" % report
    )
    for host in sorted(usage):
        cpu, rss = usage[host]
        print("  idle agent n%d: cpu %.2f%% of one core, rss %.1f MB" % (host, cpu, rss / 1e6))


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="meshelect bench failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--agents", type=int, default=5, help="agent processes (default: %(default)s)")
    p.add_argument(
        "--kills", type=int, default=10, help="leader kills (kill -9) (default: %(default)s)"
    )
    p.add_argument(
        "--transport", choices=("udp", "mqtt"), default="udp", help="(default: %(default)s)"
    )
    p.add_argument("--heartbeat-ms", type=int, default=250, help="(default: %(default)s)")
    p.add_argument(
        "--sample-ms",
        type=int,
        default=500,
        help="each agent's reading interval (default: %(default)s)",
    )
    p.add_argument(
        "--status-ms", type=int, default=250, help="status file refresh (default: %(default)s)"
    )
    p.add_argument(
        "--idle-s",
        type=float,
        default=5.0,
        help="quiet window for CPU figures (default: %(default)s)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=6.0,
        help="wait before counting readings (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("meshelect bench failover: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        import gateway.service  # noqa: F401
    except ImportError as exc:
        print(
            "meshelect bench failover: the gateway needs meshelect[gateway] (%s)" % exc,
            file=sys.stderr,
        )
        return 2
    try:
        return failover(args)
    except MissingTool as exc:
        print("meshelect bench failover: missing %s" % exc, file=sys.stderr)
        return 2
