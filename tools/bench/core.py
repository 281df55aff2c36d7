"""Benchmark of the election core on the in-memory mesh: failover, message cost, CPU.

    meshelect bench core                    # meshes of 10, 100 and 1000 nodes
    meshelect bench core --sizes 10,100 --crashes 50
    meshelect bench core --sizes 1000 --crashes 3 --per-delivery   # without the cohorts

For each mesh size it boots the mesh, lets it settle, then crashes the current leader again
and again (restarting the previous victim each time, so the mesh keeps its size) and prints:

- failover: ms from the crash until every live node follows the new leader and that leader
  leads (median and p99 over all crashes);
- messages and bytes per election: what was sent between the crash and the settled mesh,
  beyond the heartbeats the nodes would have sent anyway;
- the heartbeat frame's size on the wire (with and without an 8-byte tag);
- CPU time per simulated second of a steady mesh.

Simulated time, real core, one process: the figures measure the algorithm, not a radio. The
mesh defers the heartbeats steady followers only book (agent/core/cohort.py);
``--per-delivery`` hands every message to every node instead, as before the cohorts (the same
results, tests/test_core_cohort.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agent import strict_cbor
from agent.core.mesh import Mesh
from agent.core.messages import HEARTBEAT, Msg
from agent.core.node import ROLE_LEADER, Config
from agent.core.wire import Codec
from testkit.tools import SOURCE_ROOT, find_tool


def build(n: int, heartbeat_ms: int, seed: int, batched: bool = True) -> Mesh:
    config = Config(heartbeat_ms=heartbeat_ms, max_peers=max(64, n))
    mesh = Mesh(config, seed=seed, batched=batched)
    for i in range(n):
        # A spread of batteries and links, like a real deployment.
        mesh.add("n%04d" % i, battery=150 + (i * 7919) % 850, link=200 + (i * 104729) % 800)
    for sim in mesh.order:
        mesh.start(sim.id)
    return mesh


def settled_leader(mesh: Mesh) -> str | None:
    leader = None
    for sim in mesh.order:
        if sim.node is None or not sim.up:
            continue
        if leader is None:
            leader = sim.node.leader
            if leader is None:
                return None
        elif sim.node.leader != leader:
            return None
    sim_leader = None if leader is None else mesh.nodes[leader]
    if sim_leader is None or sim_leader.node is None or not sim_leader.up:
        return None
    return leader if sim_leader.node.role == ROLE_LEADER else None


def heartbeat_bytes(tagged: bool) -> int:
    codec = Codec(
        "greenhouse-1",
        b"k" * 32 if tagged else None,
        strict_cbor.dumps,
        strict_cbor.loads,
        boot=123456,
    )
    beat = Msg(HEARTBEAT, "x" * 16, term=4242, flags=5, score=1000, heard=65535)
    beat.battery, beat.link = 1000, 1000
    codec.counter = 1 << 31  # a long-running node: the counter takes its widest encoding
    return len(codec.encode(beat))


def frame_bytes(codec: Codec, msg: Msg) -> int:
    return len(codec.encode(msg))


def failover_run(
    n: int, crashes: int, heartbeat_ms: int, seed: int, batched: bool = True
) -> dict[str, float]:
    mesh = build(n, heartbeat_ms, seed, batched)
    codec = Codec("bench", b"k" * 32, strict_cbor.dumps, strict_cbor.loads)
    counted = {"messages": 0, "bytes": 0}
    # The bench wraps the simulator's private hook after each node's turn to count what the
    # nodes send (the stub, agent/core/mesh.pyi, leaves private names out).
    original_after = mesh._after  # type: ignore[attr-defined]

    def counting_after(sim):  # type: ignore[no-untyped-def]
        for m in sim.node.outbox:
            if m.kind != HEARTBEAT:
                counted["messages"] += 1
                counted["bytes"] += frame_bytes(codec, m)
        original_after(sim)

    mesh._after = counting_after  # type: ignore[attr-defined]
    mesh.run_until(5 * 1000)
    times: list[int] = []
    per_election_msgs: list[int] = []
    per_election_bytes: list[int] = []
    victim_before = None
    step = heartbeat_ms // 10 or 1
    for _ in range(crashes):
        leader = settled_leader(mesh)
        if leader is None:
            mesh.run_until(mesh.now + 10 * heartbeat_ms)
            leader = settled_leader(mesh)
            if leader is None:
                raise RuntimeError("mesh did not settle")
        if victim_before is not None:
            mesh.start(victim_before)  # back to full size, as a follower
            mesh.run_until(mesh.now + 3 * heartbeat_ms)
            leader = settled_leader(mesh) or leader
        # Crash at a random phase of the heartbeat cycle.
        mesh.run_until(mesh.now + mesh.prng.below(heartbeat_ms))
        counted["messages"] = counted["bytes"] = 0
        crashed_at = mesh.now
        mesh.crash(leader)
        deadline = crashed_at + 40 * heartbeat_ms
        while mesh.now < deadline:
            mesh.run_until(mesh.now + step)
            new = settled_leader(mesh)
            if new is not None and new != leader:
                break
        else:
            raise RuntimeError("no failover within 40 intervals")
        times.append(mesh.now - crashed_at)
        per_election_msgs.append(counted["messages"])
        per_election_bytes.append(counted["bytes"])
        victim_before = leader
    mesh._after = original_after  # type: ignore[attr-defined]
    times.sort()
    p99 = times[min(len(times) - 1, (len(times) * 99) // 100)]
    return {
        "median_ms": statistics.median(times),
        "p99_ms": p99,
        "max_ms": times[-1],
        "msgs": statistics.mean(per_election_msgs),
        "bytes": statistics.mean(per_election_bytes),
        "resolution_ms": step,
    }


def cpu_per_sim_second(
    n: int, heartbeat_ms: int, seed: int, seconds: int, batched: bool = True
) -> tuple[float, float]:
    mesh = build(n, heartbeat_ms, seed, batched)
    mesh.run_until(3000)
    sent_before = mesh.messages
    t0 = time.process_time()
    mesh.run_until(3000 + seconds * 1000)
    cpu = time.process_time() - t0
    per_node_interval = (mesh.messages - sent_before) / n / (seconds * 1000 / heartbeat_ms)
    return cpu / seconds, per_node_interval


def replay_timing(nodes: int = 12, minutes: int = 5) -> None:
    """Wall time of a replay on each interpreter (the allocation budget of the core)."""
    specs = [
        {"id": "n%02d" % i, "battery": 300 + i * 50, "link": 900 - i * 20} for i in range(nodes)
    ]
    scenario = {
        "seed": 3,
        "heartbeat_ms": 250,
        "nodes": specs,
        "steps": [
            {"at": 0, "op": "start", "nodes": [s["id"] for s in specs]},
            {"at": minutes * 60000, "op": "end"},
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timing.json"
        path.write_text(json.dumps(scenario))
        interpreters = [("cpython", sys.executable)]
        mpy = find_tool("micropython")
        if mpy is not None:
            interpreters.append(("micropython", mpy))
        for name, exe in interpreters:
            t0 = time.perf_counter()
            done = subprocess.run(
                [exe, "-m", "agent.core.replay", str(path)],
                cwd=SOURCE_ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - t0
            stats = done.stdout.strip().splitlines()[-1] if done.stdout else done.stderr
            print(
                "replay %d nodes x %d simulated min on %-11s %6.2f s  (%s)"
                % (nodes, minutes, name, wall, stats)
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meshelect bench core",
        description="Benchmark the election core on the in-memory mesh (simulated time).",
    )
    parser.add_argument("--sizes", default="10,100,1000", help="mesh sizes (default 10,100,1000)")
    parser.add_argument(
        "--crashes", type=int, default=0, help="leader crashes per size (default: 200/50/3)"
    )
    parser.add_argument("--heartbeat-ms", type=int, default=250)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sim-seconds",
        type=int,
        default=0,
        help="simulated seconds of steady mesh the CPU figure is taken over "
        "(default: 20 up to 100 nodes, else 5, or 1 with --per-delivery)",
    )
    parser.add_argument(
        "--per-delivery",
        action="store_true",
        help="hand every message to every node (no cohorts): the figures before the cohorts",
    )
    parser.add_argument(
        "--replay-timing",
        action="store_true",
        help="only time a 12-node, 5-minute replay on CPython and MicroPython",
    )
    args = parser.parse_args(argv)
    if args.replay_timing:
        replay_timing()
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(
        "heartbeat frame: %d bytes untagged, %d bytes with an 8-byte tag (16-byte node id)"
        % (heartbeat_bytes(False), heartbeat_bytes(True))
    )
    print(
        "%6s %8s %10s %8s %8s %10s %11s %13s %10s"
        % ("nodes", "crashes", "median_ms", "p99_ms", "max_ms", "msgs/elec", "bytes/elec",
           "cpu_s/sim_s", "hb/node/iv")
    )  # fmt: skip
    batched = not args.per_delivery
    for n in sizes:
        crashes = args.crashes or (200 if n <= 10 else 50 if n <= 100 else 3)
        sim_seconds = args.sim_seconds or (20 if n <= 100 else 5 if batched else 1)
        print("# %d nodes: %d crashes ..." % (n, crashes), file=sys.stderr, flush=True)
        fo = failover_run(n, crashes, args.heartbeat_ms, args.seed, batched)
        cpu, hb_rate = cpu_per_sim_second(n, args.heartbeat_ms, args.seed, sim_seconds, batched)
        print(
            "%6d %8d %10.0f %8.0f %8.0f %10.1f %11.0f %13.4f %10.3f"
            % (n, crashes, fo["median_ms"], fo["p99_ms"], fo["max_ms"], fo["msgs"],
               fo["bytes"], cpu, hb_rate)
        )  # fmt: skip
    print(
        "failover measured in steps of %d ms of simulated time; %s"
        % (
            args.heartbeat_ms // 10,
            "cohorts defer steady heartbeats" if batched else "every delivery a Node.receive",
        )
    )
    return 0


def cli(argv: list[str]) -> int:
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
