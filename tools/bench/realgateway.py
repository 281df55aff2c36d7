"""The real gateway (`python -m gateway`) as the failover bench's sink (`--gateway real`).

The bench's own sink (`meshelect bench sink`) logs one JSON line per batch, with a wall-clock
stamp taken as the batch arrives. The real gateway stores readings and accepted batches in
SQLite instead; `gateway_records` turns those into the same records, so the bench's delivery
and first-batch figures come out of the gateway's own storage: `received_ms` for a batch is
the gateway's wall clock at ingest, after its fencing and dedup, in the same transaction.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import sys
from typing import Any

from agent.core.messages import ACK_OK

DEDUP_METRIC = re.compile(r"^meshelect_gateway_dedup_hits(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)$")


def start_real_gateway(
    lab: Any, host: int, db_path: str, udp_port: int, broker: tuple[str, int] | None
) -> Any:
    """Start the gateway inside lab host `host`: UDP on its address, or MQTT from `broker`."""
    from testkit.gateway import GatewayProcess

    extra: list[str] = []
    if broker is not None:
        extra = ["--mqtt-host", broker[0], "--mqtt-port", str(broker[1]), "--no-udp"]
    gateway = GatewayProcess(
        db_path,
        *extra,
        udp_port=udp_port,
        host=lab.address(host),
        wrap=lab.command(host, []),
    )
    return gateway.start()


def gateway_records(db_path: str, mesh: str) -> list[dict[str, Any]]:
    """The gateway's batches and readings as sink-style records (see tools/bench/failover.py Sink):
    one record per accepted batch (leader, wall time, no readings) and one holding every
    stored reading; a database not there yet (or locked) gives what could be read."""
    records: list[dict[str, Any]] = []
    try:
        db = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
    except sqlite3.Error:
        return records
    try:
        for leader, term, batch_id, received_ms in db.execute(
            "SELECT leader, term, batch_id, received_ms FROM batches WHERE mesh = ? "
            "ORDER BY received_ms",
            (mesh,),
        ):
            records.append(
                {
                    "event": "batch",
                    "leader": leader,
                    "term": term,
                    "id": batch_id,
                    "status": ACK_OK,
                    "wall": received_ms / 1000,
                    "readings": [],
                }
            )
        stored = [
            [node, boot, seq]
            for node, boot, seq in db.execute(
                "SELECT node, boot, seq FROM readings WHERE mesh = ?", (mesh,)
            )
        ]
        records.append({"event": "batch", "leader": None, "wall": 0, "readings": stored})
    except sqlite3.Error:
        pass
    finally:
        db.close()
    return records


def dedup_hits(lab: Any, host: int, url: str) -> int | None:
    """Readings the gateway received again and dropped (from its /metrics), or None."""
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    with contextlib.suppress(Exception):
        result = lab.exec(host, [sys.executable, "-c", fetch, url + "/metrics"], timeout=15)
        for line in result.stdout.splitlines():
            match = DEDUP_METRIC.match(line.strip())
            if match:
                return int(float(match.group(1)))
    return None
