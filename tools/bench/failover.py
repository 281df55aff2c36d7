"""`meshelect bench failover`: kill -9 the leader of a real mesh, again and again.

N agent processes, one per network namespace (root), the real gateway (`python -m gateway`)
on one more namespace, for MQTT a Mosquitto beside it, then M kill -9 of whoever leads. For
each heartbeat of ``--heartbeat-ms`` (a list: ``50,100,250``) a new mesh does this, and one
table shows per heartbeat: the time from the kill to every member following the new leader
and to the first batch the gateway stores from it (median, p99), the frames per second on the
wire while the mesh idles (every host's frames into the bridge: heartbeats, readings, acks,
batches), the agents' CPU (% of one core) over that quiet window, and the readings taken,
stored, lost and arrived twice (the gateway stores those once).

``--compare etcd`` runs a five-member etcd cluster on loopback beside it (heartbeat/election
50/250 ms, kill -9 its raft leader, time until the survivors report a new leader) and prints
the ratio to meshelect's 50 ms figures (tools/bench/etcd.py; needs the ``etcd`` program).

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

from agent.core.node import Config
from testkit.meshlab import MeshUnderTest, boot_progress, delivery_report, parse_log_time
from testkit.tools import MissingTool
from tools.bench.usage import measure, percentile

LAB_PREFIX = "mb-"  # the tests' meshes use "ma-"; the pid tag keeps runs apart either way
COMPARE_AT_MS = 50  # the heartbeat whose figures the etcd comparison divides by

# ---------------------------------------------------------------------------- failover bench


def heartbeat_list(text: str) -> list[int]:
    """``"50,100,250"`` -> ``[50, 100, 250]``: each within the core's heartbeat range, no
    repeats, in the given order (argparse type: raises ArgumentTypeError)."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
            Config(heartbeat_ms=value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                "heartbeat %r: %s" % (part, exc if "heartbeat_ms" in str(exc) else "not an integer")
            ) from None
        if value in values:
            raise argparse.ArgumentTypeError("heartbeat %d ms given twice" % value)
        values.append(value)
    return values


def election_settings(suspect_intervals: int | None, probes: int | None = None) -> str:
    """The agents' ``[election]`` table for ``--suspect-intervals`` and ``--probes`` (None:
    the core's default)."""
    given = [("suspect_intervals", suspect_intervals), ("probes", probes)]
    lines = ["%s = %d\n" % (name, value) for name, value in given if value is not None]
    return "[election]\n" + "".join(lines) if lines else ""


def election_summary(args: argparse.Namespace) -> str:
    """How the bench's agents detect a dead leader, for a headline."""
    default = Config()
    text = "suspect after %d heartbeats" % (args.suspect_intervals or default.suspect_intervals)
    probes = default.probes if args.probes is None else args.probes
    if probes:
        text += " and %d unanswered probes (max(hb / 8, 5) ms each)" % probes
    return text


def _setting_arg(name: str) -> Any:
    """argparse type of an ``[election]`` option: an integer within the core's range."""

    def check(text: str) -> int:
        try:
            value = int(text)
            setting: dict[str, Any] = {name: value}
            Config(**setting)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return check


suspect_intervals_arg = _setting_arg("suspect_intervals")


def add_election_options(p: argparse.ArgumentParser) -> None:
    """The election settings a bench may change from the core's defaults."""
    p.add_argument(
        "--suspect-intervals",
        type=suspect_intervals_arg,
        metavar="N",
        help="election.suspect_intervals of every agent (default: the core's, %d)"
        % Config().suspect_intervals,
    )
    p.add_argument(
        "--probes",
        type=_setting_arg("probes"),
        metavar="N",
        help="election.probes of every agent: probe a silent leader N times before "
        "suspecting it (default: the core's, %d)" % Config().probes,
    )


def new_mesh(
    args: argparse.Namespace, heartbeat_ms: int, prefix: str, transport: str = "udp"
) -> MeshUnderTest:
    """The bench's mesh (not open yet): ``args.agents`` agents with the bench's settings."""
    return MeshUnderTest(
        args.agents,
        transport,
        heartbeat_ms=heartbeat_ms,
        prefix=prefix,
        sample_ms=args.sample_ms,
        status_ms=args.status_ms,
        agent_extra=election_settings(args.suspect_intervals, args.probes),
    )


def start_agents(mesh: MeshUnderTest) -> str | None:
    """Open the lab, start every agent, and return the leader they agree on (None: none in
    20 s). Close batteries (within the hysteresis margin): a restarted node does not take the
    lead back, so each kill hits whoever leads now."""
    mesh.open()
    for host in range(1, mesh.n + 1):
        mesh.start_agent(host, 950 - 10 * host)
    leader: str | None = mesh.wait_for(mesh.agreed_leader, 20)
    if leader is None:
        print("heartbeat %d ms: no leader agreed within 20 s" % mesh.heartbeat_ms, file=sys.stderr)
    return leader


def readings_report(
    mesh: MeshUnderTest, killed_boots: dict[tuple[str, int], tuple[int, int]]
) -> dict[str, Any]:
    """What the agents took against what the gateway stored (``delivery_report``), and how
    many readings reached the gateway again (its dedup counter; -1: unknown)."""
    report = delivery_report(mesh, killed_boots)
    counters = mesh.gateway_counters()
    report["duplicate_arrivals"] = int(counters.get("meshelect_gateway_dedup_hits_total", -1))
    return report


def failover(args: argparse.Namespace, heartbeat_ms: int) -> dict[str, Any]:
    """One mesh at ``heartbeat_ms``: idle figures, then ``args.kills`` kills. Returns a row of
    the table (``follow`` and ``batch``: seconds per kill)."""
    row: dict[str, Any] = {"heartbeat_ms": heartbeat_ms, "follow": [], "batch": []}
    killed_boots: dict[tuple[str, int], tuple[int, int]] = {}
    mesh = new_mesh(args, heartbeat_ms, LAB_PREFIX, args.transport)
    try:
        if start_agents(mesh) is None:
            return row
        row.update(idle_figures(mesh, args.idle_s))
        for round_no in range(args.kills):
            if not kill_leader(mesh, round_no, row, killed_boots):
                break
        # Let the last resends settle before counting.
        time.sleep(args.settle_s)
        row.update(readings_report(mesh, killed_boots))
    finally:
        mesh.close()
        mesh.cleanup()
    return row


def idle_figures(mesh: MeshUnderTest, seconds: float) -> dict[str, Any]:
    """CPU (% of one core) and RSS of each agent, and the frames all hosts sent per second,
    over one quiet window of the settled mesh."""
    hosts = mesh.alive()
    pids = [mesh.procs[h].pid for h in hosts]
    before = mesh.lab.frames_sent()
    t0 = time.monotonic()
    usage = measure(pids, seconds)
    elapsed = time.monotonic() - t0
    after = mesh.lab.frames_sent()
    frames = sum(after.values()) - sum(before.values())
    agents = sum(after[h] - before[h] for h in hosts)
    return {
        "usage": dict(zip(hosts, usage, strict=True)),
        "frames_per_s": frames / elapsed,
        "agent_frames_per_s": agents / elapsed,
    }


def kill_leader(
    mesh: MeshUnderTest,
    round_no: int,
    row: dict[str, Any],
    killed_boots: dict[tuple[str, int], tuple[int, int]],
) -> bool:
    """kill -9 whoever leads, time the failover, start the victim again. False: give up."""
    leader = mesh.wait_for(mesh.agreed_leader, 20)
    if leader is None:
        print("round %d: no agreed leader" % round_no, file=sys.stderr)
        return False
    victim = mesh.host_of(leader)
    kill_wall = time.time()
    mesh.kill(victim)
    boot, taken, confirmed = boot_progress(mesh.state_dir(victim))
    killed_boots[(leader, boot)] = (taken, confirmed)
    survivors = mesh.alive()
    new_leader = mesh.wait_for(partial(_new_leader, mesh, survivors, leader), 20)
    if new_leader is None or new_leader == leader:
        print("round %d: no new leader" % round_no, file=sys.stderr)
        return False
    follow = _last_follow_time(mesh, survivors, new_leader, kill_wall)
    first_batch = mesh.wait_for(partial(_first_batch, mesh, new_leader, kill_wall), 20)
    row["follow"].append(follow - kill_wall)
    if first_batch is not None:
        row["batch"].append(first_batch - kill_wall)
    print(
        "hb %d ms kill %2d: %s -> %s  follow %.0f ms  first batch %s"
        % (
            mesh.heartbeat_ms,
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
    return True


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


# ---------------------------------------------------------------------------- the table


def _ms(values: list[float], fraction: float | None) -> str:
    """Median (``fraction`` None) or a percentile of seconds, in ms; ``-`` without values."""
    if not values:
        return "-"
    value = statistics.median(values) if fraction is None else percentile(values, fraction)
    return "%.0f" % (value * 1000)


def table(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """The figures of every heartbeat, one line each."""
    header = (
        "heartbeat",
        "kills",
        "follow med",
        "p99",
        "batch med",
        "p99",
        "frames/s",
        "cpu idle",
        "taken",
        "stored",
        "lost",
        "dup",
    )
    body = []
    for row in rows:
        usage = row.get("usage") or {}
        cpu = [u[0] for u in usage.values()]
        body.append(
            (
                "%d ms" % row["heartbeat_ms"],
                "%d" % len(row["follow"]),
                _ms(row["follow"], None),
                _ms(row["follow"], 0.99),
                _ms(row["batch"], None),
                _ms(row["batch"], 0.99),
                "%.0f" % row["frames_per_s"] if "frames_per_s" in row else "-",
                "%.1f%%" % max(cpu) if cpu else "-",
                str(row.get("taken", "-")),
                str(row.get("stored", "-")),
                str(row["lost"] + row["lost_with_kill"]) if "lost" in row else "-",
                str(row.get("duplicate_arrivals", "-")),
            )
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "failover over %s, %d agents, sample %d ms, %s; times in ms "
        "from the kill -9"
        % (
            args.transport,
            args.agents,
            args.sample_ms,
            election_summary(args),
        )
    ]
    for line in [header, *body]:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    lines += [
        "follow: until the last survivor follows the new leader (its log); batch: until the",
        "gateway stored the new leader's first batch; p99 of up to 50 kills is the worst one.",
        "frames/s: every frame the agents and the gateway sent while idle; cpu idle: the",
        "busiest agent over %.0f s (load average now %.1f); lost: taken, never stored (kill -9"
        % (args.idle_s, os.getloadavg()[0]),
        "included), in flight at the end apart; dup: readings that reached the gateway again",
        "(stored once).",
    ]
    for row in rows:
        if row.get("in_flight_at_end"):
            lines.append(
                "heartbeat %d ms: %d readings still in flight at the end (not lost)"
                % (row["heartbeat_ms"], row["in_flight_at_end"])
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshelect bench failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--agents", type=int, default=5, help="agent processes (default: %(default)s)")
    p.add_argument(
        "--kills",
        type=int,
        default=20,
        help="leader kills (kill -9) per heartbeat (default: %(default)s)",
    )
    p.add_argument(
        "--transport", choices=("udp", "mqtt"), default="udp", help="(default: %(default)s)"
    )
    p.add_argument(
        "--heartbeat-ms",
        type=heartbeat_list,
        default=[250],
        metavar="MS[,MS...]",
        help="one mesh per heartbeat, e.g. 50,100,250 (default: 250)",
    )
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
        help="quiet window for the CPU and frame figures (default: %(default)s)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=6.0,
        help="wait before counting readings (default: %(default)s)",
    )
    add_election_options(p)
    p.add_argument(
        "--compare",
        choices=("etcd",),
        help="also kill the raft leader of a five-member etcd cluster on loopback "
        "(heartbeat/election 50/250 ms) as often, and print the ratio (needs etcd)",
    )
    return p


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.agents < 2:
        print("meshelect bench failover: need at least 2 agents", file=sys.stderr)
        return 2
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
        if args.compare == "etcd":
            from tools.bench import etcd

            etcd.require()  # before any mesh runs: say it at once
        rows = [failover(args, heartbeat_ms) for heartbeat_ms in args.heartbeat_ms]
        print()
        print(table(args, rows))
        complete = all(len(row["follow"]) == args.kills for row in rows)
        if args.compare == "etcd":
            ours = next((r for r in rows if r["heartbeat_ms"] == COMPARE_AT_MS), None)
            print()
            print(etcd.compare(args.kills, ours))
    except MissingTool as exc:
        print("meshelect bench failover: missing %s" % exc, file=sys.stderr)
        return 2
    return 0 if complete else 1
