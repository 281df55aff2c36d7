"""`meshelect bench restart`: whole-site power cuts of a real mesh, again and again.

N agent processes, one per network namespace (root), the real gateway on one more. R times:
kill -9 every agent at once (``--gateway``: the gateway too; ``--wipe``: their state dirs
deleted, as a new SD card would), then start them all again. Prints, per run and as median and
max, the time from the agents' start to the new leader's election and to the first batch the
gateway accepts, and at the end the readings taken, stored and lost (with ``--wipe``, readings
held in RAM by a killed agent die with its state: counted apart, as "lost with kill -9").
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from functools import partial

from testkit.meshlab import MeshUnderTest, boot_progress, delivery_report, parse_log_time
from testkit.tools import MissingTool

LAB_PREFIX = "mr-"


def _first_batch_after(mesh: MeshUnderTest, since: float) -> float | None:
    walls = [b["wall"] for b in mesh.batches() if b["wall"] >= since]
    return min(walls) if walls else None


def _elected_at(mesh: MeshUnderTest, leader: str, since: float) -> float | None:
    """When ``leader`` logged that it leads, after ``since`` (wall time), or None."""
    for event in mesh.agent_events(mesh.host_of(leader)):
        if (
            event.get("event") == "role_changed"
            and event.get("role") == "leader"
            and parse_log_time(str(event.get("ts", ""))) >= since
        ):
            return parse_log_time(str(event.get("ts", "")))
    return None


def restart(args: argparse.Namespace) -> int:
    n = args.agents
    to_election: list[float] = []
    to_batch: list[float] = []
    election_to_batch: list[float] = []
    killed: dict[tuple[str, int], tuple[int, int]] = {}
    mesh = MeshUnderTest(n, args.transport, prefix=LAB_PREFIX, sample_ms=args.sample_ms)
    hosts = list(range(1, n + 1))
    try:
        mesh.open()
        for host in hosts:
            mesh.start_agent(host, 1000 - 50 * host)
        if mesh.wait_for(lambda: _first_batch_after(mesh, 0), 30) is None:
            print("no batch stored within 30 s", file=sys.stderr)
            return 1
        for run in range(args.runs):
            for host in hosts:
                boot, taken, confirmed = boot_progress(mesh.state_dir(host))
                killed[(mesh.node_id(host), boot)] = (taken, confirmed)
                mesh.kill(host)
            if args.gateway and mesh.gateway is not None:
                mesh.gateway.kill()
                mesh.gateway.start()
            if args.wipe:
                for host in hosts:
                    shutil.rmtree(mesh.state_dir(host), ignore_errors=True)
            start = time.time()
            for host in hosts:
                mesh.start_agent(host, 1000 - 50 * host)
            first = mesh.wait_for(partial(_first_batch_after, mesh, start), 30, step=0.05)
            leader = mesh.wait_for(mesh.agreed_leader, 10)
            elected = _elected_at(mesh, leader, start) if leader else None
            if first is None:
                print("run %2d: no batch stored within 30 s" % (run + 1), flush=True)
                continue
            to_batch.append(first - start)
            if elected is not None:
                to_election.append(elected - start)
                election_to_batch.append(max(0.0, first - elected))
            print(
                "run %2d: leader %s  start -> elected %s  start -> first batch %.0f ms"
                % (
                    run + 1,
                    leader,
                    "%.0f ms" % ((elected - start) * 1000) if elected else "?",
                    (first - start) * 1000,
                ),
                flush=True,
            )
            time.sleep(args.between_s)
        time.sleep(args.settle_s)
        report = delivery_report(mesh, killed)
    finally:
        mesh.close()
        mesh.cleanup()
    print()
    print(
        "whole-site restart over %s, %d agents, sample %d ms, %d runs%s%s"
        % (
            args.transport,
            n,
            args.sample_ms,
            len(to_batch),
            ", gateway restarted too" if args.gateway else "",
            ", state dirs wiped" if args.wipe else "",
        )
    )
    for name, values in (
        ("agents start -> leader elected", to_election),
        ("agents start -> first stored batch", to_batch),
        ("leader elected -> first stored batch", election_to_batch),
    ):
        if values:
            print(
                "  %s: median %.0f ms  max %.0f ms"
                % (name, statistics.median(values) * 1000, max(values) * 1000)
            )
    print(
        "  readings: taken %(taken)d  stored %(stored)d  lost %(lost)d  "
        "lost with kill -9 %(lost_with_kill)d  in flight at end %(in_flight_at_end)d" % report
    )
    return 0 if len(to_batch) == args.runs else 1


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="meshelect bench restart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--agents", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--runs", type=int, default=10, help="power cuts (default: %(default)s)")
    p.add_argument(
        "--transport", choices=("udp", "mqtt"), default="udp", help="(default: %(default)s)"
    )
    p.add_argument("--sample-ms", type=int, default=300, help="(default: %(default)s)")
    p.add_argument("--gateway", action="store_true", help="restart the gateway too")
    p.add_argument("--wipe", action="store_true", help="delete the agents' state dirs")
    p.add_argument(
        "--between-s", type=float, default=3.0, help="run time between cuts (default: 3)"
    )
    p.add_argument("--settle-s", type=float, default=8.0, help="wait before counting (default: 8)")
    args = p.parse_args(argv)
    try:
        return restart(args)
    except MissingTool as exc:
        print("meshelect bench restart: %s" % exc, file=sys.stderr)
        return 2
