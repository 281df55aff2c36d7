"""``meshelect bench gateway``: ingest throughput, dedup cost, and batch -> live-feed delay.

Prints figures; asserts nothing (timings vary with the machine). Batches are built as leaders
build them (agent/core/datapath.py: up to 64 readings per batch, the frame at most 4096 bytes).

1. storage: ``Ingest.receive_many`` on a SQLite file, one batch per transaction and then
   ``GROUP`` batches per transaction (group commit), for both durability settings, each beside
   a raw SQLite bound measured in the same run (the same rows and schema, WAL, executemany in
   64-row transactions) and the ratio to it;
2. dedup: the same batches again (every reading a duplicate);
3. where a batch's CPU time goes, stage by stage (tools/bench/breakdown.py);
4. end to end: a gateway process on loopback, leaders (each a process of its own) sending
   real UDP frames with a few batches in flight each, counting readings acknowledged per
   second, in rounds each beside a raw SQLite bound on the same rows; the CPU the gateway and
   the leaders used (the leaders must not be the bottleneck); and once more with frames
   decoded in a process of their own (``--decode-process``);
5. live feed: the delay from sending a batch to receiving its SSE event (median, p99).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from typing import Any

from agent import strict_cbor
from agent.core import wire
from agent.core.batchcheck import check_batch
from agent.core.messages import BATCH, Msg
from gateway.ingest import Arrival, Ingest
from gateway.metrics import Counters
from gateway.storage import SqliteStorage
from gateway.tracker import Tracker
from testkit.gateway import BatchSender, GatewayProcess, make_batch
from tools.bench.breakdown import breakdown
from tools.bench.leaders import cpu_seconds
from tools.bench.leaders import run as run_leaders

READINGS_PER_BATCH = 64  # datapath.BATCH_MAX_READINGS
# Batches per commit in the group-commit figure: what 4 leaders with 4 batches in flight each
# (the end-to-end run) can have waiting at the gateway at once.
GROUP = 16
# The leaders' mesh key (the frames' HMAC tags; also what sizes a batch to one frame).
BENCH_KEY = b"bench-key"


def leader_batches(mesh: str, leader: str, count: int, nodes: int = 8) -> list[dict[str, Any]]:
    """``count`` batches that each fit one frame, readings spread over ``nodes`` members."""
    codec = wire.Codec(
        mesh, BENCH_KEY, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch
    )
    batches = []
    seq = 0
    for batch_id in range(1, count + 1):
        size = READINGS_PER_BATCH
        while True:
            rows = []
            for k in range(size):
                node = "node-%02d" % ((seq + k) % nodes)
                s = (seq + k) // nodes
                rows.append(
                    [
                        node,
                        1,
                        s,
                        1_700_000_000_000 + 1000 * s,
                        {"temp": 21_000 + s % 900, "hum": 50_000 + s % 3000},
                    ]
                )
            members = [["node-%02d" % i, 800, 800, 900, 0, 50] for i in range(nodes)]
            batch = make_batch(batch_id, mesh, leader, rows, members=members)
            try:
                codec.encode(Msg(BATCH, leader, term=1, body=batch))
                break
            except wire.WireError:
                size -= 4  # too big for one frame: a leader would send fewer readings
        seq += size
        batches.append(batch)
    return batches


def raw_bound(batches: list[dict[str, Any]], synchronous: str) -> float:
    """Readings/s plain SQLite takes: the gateway's schema, WAL, the same rows, executemany in
    64-row transactions, and nothing else (no fencing, no dedup check, no batch records)."""
    return raw_bound_cpu(batches, synchronous)[0]


def raw_bound_cpu(batches: list[dict[str, Any]], synchronous: str) -> tuple[float, float]:
    """:func:`raw_bound`, and the CPU µs it spent per reading."""
    rows = [
        (b["mesh"], r[0], r[1], r[2], r[3], 1_000_000, json.dumps(r[4], separators=(",", ":")))
        for b in batches
        for r in b["readings"]
    ]
    with tempfile.TemporaryDirectory(prefix="meshelect-bench-") as folder:
        SqliteStorage(os.path.join(folder, "gw.db")).close()  # the schema, by the migrations
        db = sqlite3.connect(os.path.join(folder, "gw.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = %s" % synchronous)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(rows), READINGS_PER_BATCH):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows[i : i + READINGS_PER_BATCH],
            )
            db.execute("COMMIT")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        db.close()
    return len(rows) / elapsed, 1e6 * cpu / len(rows)


def bench_storage(batches: list[dict[str, Any]], synchronous: str, group: int) -> dict[str, float]:
    """``Ingest.receive_many`` on a SQLite file, ``group`` batches per call (one transaction).

    The batches come as the frame path hands them over: schema-checked by the codec already.
    """
    with tempfile.TemporaryDirectory(prefix="meshelect-bench-") as folder:
        storage = SqliteStorage(os.path.join(folder, "gw.db"), synchronous=synchronous)
        ingest = Ingest(storage, Tracker(), Counters())
        total = sum(len(b["readings"]) for b in batches)

        def run(at_ms: int) -> float:
            start = time.perf_counter()
            for i in range(0, len(batches), group):
                arrivals = [
                    Arrival("bench", b["mesh"], b["leader"], 1, b, True)
                    for b in batches[i : i + group]
                ]
                ingest.receive_many(arrivals, at_ms + i)
            return time.perf_counter() - start

        fresh = run(1_000_000)
        again = run(2_000_000)
        assert storage.reading_count() == total
        assert ingest.counters.dedup_hits == total
        storage.close()
    return {
        "readings": total,
        "batches": len(batches),
        "readings_per_s": total / fresh,
        "ms_per_batch": 1000 * fresh / len(batches),
        "dup_readings_per_s": total / again,
        "dup_ms_per_batch": 1000 * again / len(batches),
    }


def bench_udp(
    leaders: int,
    per_leader: int,
    window: int,
    db: str | None = None,
    replicas: int = 1,
    extra: tuple[str, ...] = (),
    work: list[list[dict[str, Any]]] | None = None,
) -> dict[str, float]:
    """Leaders, each in a process of its own (tools/bench/leaders.py), send to ``replicas``
    gateway processes on one database (leader i to replica i mod replicas); ``db`` None: a
    SQLite file of its own. ``work``: each leader's batches (else ``per_leader`` made here).

    Returns the leaders' figures (readings, seconds, readings_per_s, resent, sender_cpu_s)
    and ``gateway_cpu_s``, the CPU time of the gateway processes and their decoders."""
    with tempfile.TemporaryDirectory(prefix="meshelect-bench-") as folder:
        url = db or os.path.join(folder, "gw.db")
        # Keyed meshes, as a site runs them: every frame's HMAC tag is checked.
        keys = ["--mesh-key=mesh-%d=%s" % (i, BENCH_KEY.hex()) for i in range(leaders)]
        gws = [GatewayProcess(url, *keys, *extra).start() for _ in range(replicas)]
        try:
            if work is None:
                work = [
                    leader_batches("mesh-%d" % i, "lead-%d" % i, per_leader) for i in range(leaders)
                ]
            pids = [gw.process.pid for gw in gws if gw.process is not None]
            before = sum(cpu_seconds(pid) for pid in pids)
            # Leader i sends to replica i mod replicas.
            gateways = [gws[i % len(gws)].udp for i in range(leaders)]
            result = run_leaders(gateways, work, window, BENCH_KEY)
            result["gateway_cpu_s"] = sum(cpu_seconds(pid) for pid in pids) - before
        finally:
            for gw in gws:
                gw.stop()
    return result


def bench_end_to_end(scale: float, rounds: int) -> None:
    """Rounds of raw bound, end to end, raw bound again, on the same rows, for each durability
    setting (the gateway's ``--sync``); the ratio is to the better of the two bounds, and the
    median ratio over the rounds is printed. On a shared machine either may be slowed by
    others; CPU time per reading, the gateway's against the bound's, is less affected."""
    work = [leader_batches("mesh-%d" % i, "lead-%d" % i, int(375 * scale)) for i in range(4)]
    rows = [batch for batches in work for batch in batches]
    ratios: dict[str, list[float]] = {"NORMAL": [], "FULL": []}
    for number in range(1, rounds + 1):
        for sync in ("NORMAL", "FULL"):
            ratios[sync].append(
                _round("round %d, synchronous=%s" % (number, sync), rows, work, sync, ())
            )
    for sync, values in ratios.items():
        print(
            "end to end over UDP, synchronous=%s: median %.2f of the raw bound over %d rounds "
            "(%s)"
            % (sync, statistics.median(values), rounds, ", ".join("%.2f" % x for x in values))
        )
    label = "synchronous=NORMAL, frames decoded in a process of their own"
    _round(label, rows, work, "NORMAL", ("--decode-process",))


def _round(
    label: str,
    rows: list[dict[str, Any]],
    work: list[list[dict[str, Any]]],
    sync: str,
    extra: tuple[str, ...],
) -> float:
    """One end-to-end run between two raw bounds; prints it, returns its ratio."""
    before, before_cpu = raw_bound_cpu(rows, sync)
    r = bench_udp(4, 0, 4, extra=("--sync", sync.lower(), *extra), work=work)
    after, after_cpu = raw_bound_cpu(rows, sync)
    bound = max(before, after)
    bound_cpu = min(before_cpu, after_cpu)
    gateway_cpu = 1e6 * r["gateway_cpu_s"] / max(r["readings"], 1)
    print(
        "end to end over UDP, %s (4 leader processes, 4 batches in flight each): %.0f "
        "readings/s (%d in %.2f s, %d resent), %.2f of the raw bound on the same rows (%.0f/s, "
        "the better of %.0f and %.0f); CPU per reading: gateway %.1f µs, bound %.1f µs (%.2f); "
        "CPU: gateway %.2f cores, leaders %.2f cores (they could send %.0f readings/s)"
        % (
            label,
            r["readings_per_s"],
            r["readings"],
            r["seconds"],
            r["resent"],
            r["readings_per_s"] / bound,
            bound,
            before,
            after,
            gateway_cpu,
            bound_cpu,
            bound_cpu / gateway_cpu,
            r["gateway_cpu_s"] / r["seconds"],
            r["sender_cpu_s"] / r["seconds"],
            r["readings"] / max(r["sender_cpu_s"], 1e-9),
        )
    )
    return float(r["readings_per_s"] / bound)


def pg_copy_bound(url: str, batches: list[dict[str, Any]]) -> float:
    """Readings/s PostgreSQL takes by COPY, the same rows, one 64-row transaction each."""
    import psycopg

    rows = [
        (b["mesh"], r[0], r[1], r[2], r[3], 1_000_000, json.dumps(r[4], separators=(",", ":")))
        for b in batches
        for r in b["readings"]
    ]
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for i in range(0, len(rows), READINGS_PER_BATCH):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy("COPY readings FROM STDIN") as copy,
            ):
                for row in rows[i : i + READINGS_PER_BATCH]:
                    copy.write_row(row)
        return len(rows) / (time.perf_counter() - start)


def bench_postgres(batches: list[dict[str, Any]], per_leader: int) -> None:
    """PostgreSQL: the COPY bound, the storage with group commit, 1-3 gateway replicas."""
    from gateway.pgstorage import PostgresStorage
    from testkit.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        url = server.new_database()
        PostgresStorage(url).close()  # the schema
        bound = pg_copy_bound(url, batches)
        print("raw PostgreSQL bound (COPY, 64-row transactions): %.0f readings/s" % bound)
        storage = PostgresStorage(server.new_database())
        ingest = Ingest(storage, Tracker(), Counters())
        start = time.perf_counter()
        for i in range(0, len(batches), GROUP):
            group = batches[i : i + GROUP]
            ingest.receive_many(
                [Arrival("bench", b["mesh"], b["leader"], 1, b, True) for b in group], 1000 + i
            )
        rate = storage.reading_count() / (time.perf_counter() - start)
        storage.close()
        print(
            "storage (PostgreSQL, %d batches per commit): %.0f readings/s, %.2f of the bound"
            % (GROUP, rate, rate / bound)
        )
        for replicas in (1, 2, 3):
            r = bench_udp(6, per_leader, 4, db=server.new_database(), replicas=replicas)
            print(
                "end to end over UDP, %d gateway replica(s) on one PostgreSQL (6 leaders): "
                "%.0f readings/s, %.2f of the bound"
                % (replicas, r["readings_per_s"], r["readings_per_s"] / bound)
            )
    finally:
        server.stop()


def bench_feed(samples: int) -> dict[str, float]:
    import httpx

    with tempfile.TemporaryDirectory(prefix="meshelect-bench-") as folder:
        gw = GatewayProcess(os.path.join(folder, "gw.db")).start()
        try:
            sender = BatchSender("feed", "lead", gw.udp)
            batches = leader_batches("feed", "lead", samples + 1)
            sender.deliver(1, batches[0])  # the mesh exists before the stream opens
            sent_at: dict[int, float] = {}
            delays: list[float] = []
            with httpx.stream("GET", gw.url + "/api/events", timeout=30) as response:
                lines = response.iter_lines()
                next(line for line in lines if line.startswith("data: "))  # snapshot

                def send_all() -> None:
                    for batch in batches[1:]:
                        sent_at[batch["id"]] = time.perf_counter()
                        sender.send(1, batch)
                        time.sleep(0.02)  # a busy mesh: 50 batches per second

                threading.Thread(target=send_all, daemon=True).start()
                event = ""
                for line in lines:
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "batch":
                        arrived = time.perf_counter()
                        batch_id = json.loads(line[6:])["batch_id"]
                        if batch_id in sent_at:
                            delays.append(1000 * (arrived - sent_at[batch_id]))
                        if len(delays) >= samples:
                            break
        finally:
            gw.stop()
    delays.sort()
    return {
        "samples": len(delays),
        "median_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(0.99 * len(delays)))],
        "max_ms": delays[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meshelect bench gateway", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="end-to-end rounds, each beside its bound"
    )
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0

    batches = leader_batches("bench", "lead", int(1500 * scale))
    print(
        "batch size: %d readings (2 metrics each), %d batches"
        % (len(batches[0]["readings"]), len(batches))
    )
    bounds = {}
    for sync in ("NORMAL", "FULL"):
        bounds[sync] = raw_bound(batches, sync)
        print(
            "raw SQLite bound (synchronous=%s, executemany, %d-row transactions): %.0f readings/s"
            % (sync, READINGS_PER_BATCH, bounds[sync])
        )
        for group in (1, GROUP):
            r = bench_storage(batches, sync, group)
            print(
                "storage (SQLite WAL, synchronous=%s, %d batch(es) per commit): %.0f readings/s "
                "stored (%.2f ms per batch), %.2f of the raw bound; dedup: %.0f duplicate "
                "readings/s"
                % (
                    sync,
                    group,
                    r["readings_per_s"],
                    r["ms_per_batch"],
                    r["readings_per_s"] / bounds[sync],
                    r["dup_readings_per_s"],
                )
            )
    print("where a batch's CPU time goes on the frame path (µs per batch, synchronous=NORMAL):")
    stages = breakdown(batches, BENCH_KEY, "NORMAL", 8)
    for stage, micros in stages:
        print("  %-48s %6.1f" % (stage, micros))
    print("  %-48s %6.1f" % ("total", sum(m for s, m in stages if not s.startswith(" "))))
    bench_end_to_end(scale, args.rounds)
    from testkit.postgres import available

    if available():
        bench_postgres(batches, int(170 * scale))
    else:
        print("PostgreSQL: not installed (apt-get install postgresql), skipped")
    r = bench_feed(int(300 * scale))
    print(
        "batch sent -> SSE event received: median %.1f ms, p99 %.1f ms, max %.1f ms (%d batches)"
        % (r["median_ms"], r["p99_ms"], r["max_ms"], r["samples"])
    )
    return 0


def cli(argv: list[str]) -> int:
    return main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
