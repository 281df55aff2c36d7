"""Where a batch's time goes on the gateway's frame path, stage by stage (``meshelect bench
gateway`` prints it).

Each stage is the gateway's own code run alone over the same keyed frames, in the order the
frame path runs them: receiving the datagram, the tag, the CBOR, the batch schema with the
records of the readings (and their stored metrics text), aggregates and members (one pass), the
batch record, the storage's transaction (fencing, dedup, the rows), the
tracker and live-feed events, the ack frame and its send. CPU microseconds per batch; the
storage stage is measured with group commit, as the worker stores.
"""

from __future__ import annotations

import gc
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from agent import strict_cbor
from agent.core import auth, wire
from agent.core.batchcheck import check_batch
from agent.core.messages import BATCH, Msg
from gateway.batch import parse_batch
from gateway.frames import BatchReader, FrameRouter
from gateway.ingest import Arrival, Ingest
from gateway.metrics import Counters
from gateway.storage import SqliteStorage
from gateway.tracker import Tracker

_TAG = auth.TAG_BYTES


def _cpu_us(run: Callable[[], Any], count: int) -> float:
    # Without the cyclic GC: its passes over the bench's own live frames and results (far
    # more than a gateway holds) would be charged to whichever stage they fall in.
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        run()
        return 1e6 * (time.process_time() - start) / count
    finally:
        gc.enable()


def breakdown(
    batches: list[dict[str, Any]], key: bytes, synchronous: str, group: int
) -> list[tuple[str, float]]:
    """(stage, CPU µs per batch) for ``batches`` of one mesh, sent as frames keyed by ``key``.
    Stages named with leading spaces are parts of the one before them, or a figure to compare
    with it, and are not part of the total."""
    mesh, leader = batches[0]["mesh"], batches[0]["leader"]
    codec = wire.Codec(mesh, key, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch)
    frames = [bytes(codec.encode(Msg(BATCH, leader, term=1, body=b))) for b in batches]
    n = len(frames)
    stages: list[tuple[str, float]] = []

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for frame in frames:
        sender.sendto(frame, receiver.getsockname())
    stages.append(("UDP receive", _cpu_us(lambda: [receiver.recvfrom(65536) for _ in frames], n)))

    router = FrameRouter({mesh: key}, False, "gateway", 1)
    stages.append(
        ("wire codec, every check", _cpu_us(lambda: [router.decode(f, 1) for f in frames], n))
    )
    mac = auth.Key(key)
    stages.append(
        (
            "  of which HMAC tag",
            _cpu_us(lambda: [mac.verify(f[:-_TAG], f[-_TAG:]) for f in frames], n),
        )
    )
    stages.append(
        (
            "  of which CBOR decode",
            _cpu_us(lambda: [strict_cbor.loads(f[:-_TAG]) for f in frames], n),
        )
    )
    bodies = [strict_cbor.loads(f[:-_TAG])[6] for f in frames]
    reader = BatchReader()
    stages.append(
        (
            "  of which batch schema, records, metrics text",
            _cpu_us(lambda: [reader(b) for b in bodies], n),
        )
    )
    stages.append(
        (
            "  (the core's batch schema alone, to compare)",
            _cpu_us(lambda: [check_batch(b) for b in bodies], n),
        )
    )
    made = []
    for body in bodies:
        reader(body)
        made.append(reader.records)
    stages.append(
        (
            "typed records (parse_batch)",
            _cpu_us(
                lambda: [
                    parse_batch(b, mesh, leader, True, r) for b, r in zip(bodies, made, strict=True)
                ],
                n,
            ),
        )
    )
    with tempfile.TemporaryDirectory(prefix="meshelect-bench-") as folder:
        storage = SqliteStorage(os.path.join(folder, "gw.db"), synchronous=synchronous)
        ingest = Ingest(storage, Tracker(), Counters())
        arrivals = [
            Arrival("udp", mesh, leader, 1, b, True, r) for b, r in zip(bodies, made, strict=True)
        ]
        spent = [0.0]
        real = storage.ingest_many

        def timed(items: Any, now_ms: int) -> Any:
            start = time.process_time()
            try:
                return real(items, now_ms)
            finally:
                spent[0] += time.process_time() - start

        storage.ingest_many = timed  # type: ignore[method-assign]

        def store() -> None:
            for i in range(0, n, group):
                ingest.receive_many(arrivals[i : i + group], 1000 + i)

        total = _cpu_us(store, n)
        storage.close()
    parse = stages[-1][1]  # parse_batch runs again inside receive_many
    stages.append(("storage transaction (%d batches per commit)" % group, 1e6 * spent[0] / n))
    stages.append(("tracker and live-feed events", total - 1e6 * spent[0] / n - parse))
    acks = [router.encode_ack(mesh, leader, 1, b["id"], 0, 1) for b in batches]
    stages.append(
        (
            "ack encode",
            _cpu_us(
                lambda: [router.encode_ack(mesh, leader, 1, b["id"], 0, 1) for b in batches], n
            ),
        )
    )
    target = sender.getsockname()
    stages.append(("ack send", _cpu_us(lambda: [receiver.sendto(a, target) for a in acks], n)))
    sender.close()
    receiver.close()
    return stages
