"""Leaders for the gateway bench: each in a process of its own, sending real UDP BATCH frames.

A leader's batch frames are encoded before the clock starts (a leader builds and encodes a
batch as its readings come in, not while it waits for the gateway); a frame sent again after
a lost ack is a new frame, encoded then, as a leader's is. Each leader keeps ``window``
batches in flight. Each process reports what was acknowledged and the CPU time it used, so the
bench can show that the senders were not the bottleneck.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

from testkit.gateway import BatchSender

# A batch unacknowledged this long is sent again (a leader's resend).
RESEND_S = 1.0
_DEADLINE_S = 120.0


def _lead(
    index: int,
    gateway: tuple[str, int],
    batches: list[dict[str, Any]],
    window: int,
    key: bytes | None,
    ready: Any,
    start: Any,
    results: Any,
) -> None:
    mesh, leader = batches[0]["mesh"], batches[0]["leader"]
    sender = BatchSender(mesh, leader, gateway, key=key)
    frames = [sender.frame(1, batch) for batch in batches]
    ready.put(index)
    start.wait()
    begin_cpu, begin = time.process_time(), time.perf_counter()
    pending: dict[int, dict[str, Any]] = {}
    acked = resent = 0
    todo = 0
    deadline = time.monotonic() + _DEADLINE_S
    while (todo < len(batches) or pending) and time.monotonic() < deadline:
        while todo < len(batches) and len(pending) < window:
            pending[batches[todo]["id"]] = batches[todo]
            sender.send_frame(frames[todo])
            todo += 1
        ack = sender.receive_ack(RESEND_S)
        if ack is None:  # lost: resend what is unacknowledged, as new frames
            for batch in pending.values():
                sender.send(1, batch)
                resent += 1
            continue
        done = pending.pop(ack[0], None)
        if done is not None:
            acked += len(done["readings"])
    end = time.perf_counter()
    results.put((index, acked, resent, begin, end, time.process_time() - begin_cpu))
    sender.close()


def run(
    gateways: list[tuple[str, int]],
    work: list[list[dict[str, Any]]],
    window: int,
    key: bytes | None = None,
) -> dict[str, float]:
    """Each list of batches in ``work`` sent by a leader process of its own, leader i to
    ``gateways[i]``.

    Returns ``readings`` acknowledged, ``seconds`` (first send to last ack, all leaders),
    ``resent`` frames, and ``sender_cpu_s``: the CPU time all leaders used meanwhile.
    """
    context = multiprocessing.get_context("fork")
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    processes = [
        context.Process(
            target=_lead,
            args=(i, gateways[i], batches, window, key, ready, start, results),
        )
        for i, batches in enumerate(work)
    ]
    for process in processes:
        process.start()
    for _ in processes:  # every leader has encoded its frames and waits
        ready.get(timeout=60)
    start.set()
    reports = [results.get(timeout=_DEADLINE_S + 30) for _ in processes]
    for process in processes:
        process.join(10)
    begin = min(r[3] for r in reports)
    end = max(r[4] for r in reports)
    return {
        "readings": sum(r[1] for r in reports),
        "resent": sum(r[2] for r in reports),
        "seconds": end - begin,
        "readings_per_s": sum(r[1] for r in reports) / (end - begin),
        "sender_cpu_s": sum(r[5] for r in reports),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` and of its live children, from /proc."""
    pids = [pid]
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as fp:
                pids.extend(int(child) for child in fp.read().split())
    except OSError:
        pass
    total = 0
    for one in pids:
        try:
            with open("/proc/%d/stat" % one) as fp:
                fields = fp.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")
