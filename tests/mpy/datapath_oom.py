"""A leader's collector out of heap while it makes a batch: the heap runs out at every point
of ``Collector.due_batch`` in turn (a real MemoryError: a ballast of bytearrays leaves a
block a few bytes bigger free each round), then the ballast goes and the gateway acks what went out.

usage: micropython -X heapsize=1M datapath_oom.py      (prints one JSON line)

What must hold after every MemoryError: each held reading is pending or in flight (none lost
on the way, which would leave a full collector taking nothing more for good), and at the end
every reading was acked exactly once. Then the heap stays too tight for a full batch: the
collector must still drain, in smaller batches.
"""

import gc
import json

from agent.core.datapath import Collector
from agent.core.messages import ACK_OK

MEMBERS = 10
READINGS = 3  # per member and round (while the collector has room)
TIGHT = 12000  # bytes: room for a batch of some readings, not for a full one
METRICS = {"temp_mc": 21000, "hum_mpct": 40000, "bat_pm": 900, "rssi": -60}


def squeeze(room):
    """Fill the heap but one free block of about ``room`` bytes: the list returned holds the
    rest (bytearrays; the list is made first: growing it would leave holes)."""
    gc.collect()
    hole = bytearray(room) if room else None
    ballast = [None] * 4096
    n = 0
    size = 2048
    while size >= 16:
        try:
            while n < len(ballast):
                ballast[n] = bytearray(size)
                n += 1
        except MemoryError:
            pass
        size //= 2
    hole = None  # noqa: F841  (freed: the one block left)
    gc.collect()
    return ballast


def members(now):
    return [["m%d" % i, 500, 900, 800, 0, 100] for i in range(MEMBERS)]


def round_trip(col, seqs, acked, now, room):
    """New readings while there is room, a batch made in a heap squeezed to ``room``, then the
    gateway's ack of whatever went out. Returns (failed, lost)."""
    for i in range(MEMBERS if col.held < 64 else 0):
        wire = []
        for _ in range(READINGS):
            seqs[i] += 1
            wire.append([1, seqs[i], 1700000000000 + seqs[i], dict(METRICS)])
        col.add(wire, "m%d" % i)
    ballast = squeeze(room)
    failed = False
    try:
        col.due_batch(now, 1, members)
    except MemoryError:
        failed = True
    ballast = None  # noqa: F841
    gc.collect()
    held = len(col._pending)  # what the collector holds, in its lists
    for record in col._in_flight:
        held += len(record[3])
    lost = col.held - held  # held by count, in no list: never sent, never freed
    while col._in_flight:
        record = col._in_flight[0]
        for entry in record[3]:
            i = int(entry[0][1:])
            seq = entry[2]
            if acked[i][seq]:
                acked[MEMBERS] += 1  # twice
            acked[i][seq] = 1
        col.on_batch_ack(record[0], ACK_OK, now)
    return failed, lost


def run():
    """(A function: a new global in a full heap would grow the module's dict.)"""
    col = Collector("lead", "oom", 128, batch_ms=0, batch_resend_ms=1000000, token=0x5EED1234)
    seqs = [0] * MEMBERS
    acked = [bytearray(8192) for _ in range(MEMBERS)] + [0]  # per member, by seq; twice
    failures = lost = rounds = 0
    now = 0
    first_ok = 0
    # Coarse: the room a batch needs; then byte by byte below it, where the last
    # allocations of a batch are the ones that fail.
    for room in list(range(0, 40000, 256)) + [-1]:
        if room < 0:
            break
        now += 10
        failed, n = round_trip(col, seqs, acked, now, room)
        failures += failed
        lost += n
        rounds += 1
        if not failed:
            first_ok = room
            break
    for room in range(max(0, first_ok - 1024), first_ok + 256, 4):
        now += 10
        failed, n = round_trip(col, seqs, acked, now, room)
        failures += failed
        lost += n
        rounds += 1
    # A heap that stays too tight for a full batch (on the 64-bit port one of 30 readings
    # needs about 20 KB in one block, one of a few readings 7 KB): smaller batches still go
    # out, the collector drains.
    tight = 0
    for _ in range(40):
        now += 10
        before = col.batches_acked
        failed, n = round_trip(col, seqs, acked, now, TIGHT)
        failures += failed
        lost += n
        tight += col.batches_acked - before
    # Then the rest goes, with room.
    while col.held:
        now += 10
        failed, n = round_trip(col, seqs, acked, now, 100000)
        lost += n
    total = sum(seqs)
    got = 0
    for i in range(MEMBERS):
        got += sum(acked[i])
    print(
        json.dumps(
            {
                "rounds": rounds,
                "failures": failures,
                "room": first_ok,
                "lost": lost,
                "readings": total,
                "acked": got,
                "twice": acked[MEMBERS],
                "tight_batches": tight,
            }
        )
    )


run()
