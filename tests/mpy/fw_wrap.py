"""Heap allocated per step by a leader of 10 members (firmware settings, the core on MicroPython)
across 12.4 days of uptime, where a 32-bit board's small ints end (2**30 ms).

usage: micropython -X heapsize=2M fw_wrap.py        (prints one JSON line)

Three runs of the same 60 s (the same frames, readings and acks): the clock from 0; from 2**30
ms less 3 s, set back as firmware/app/runtime.py does (by 2**28 whenever it reaches 2**29:
``NodeApp.rebase``); and from there without setting it back. Each step's bytes are
``gc.mem_alloc()`` after less before, the collector off in between (garbage counts); what the
members' side encodes is made outside. The rebase itself is not counted (once in 3.1 days).
"""

import gc
import json

import cbor

from agent.core.app import DEST_GATEWAY, NodeApp
from agent.core.messages import ACK_OK, BATCH_ACK, HEARTBEAT, READINGS, Msg
from agent.core.wire import Codec

REBASE_AT = 1 << 29  # firmware/app/runtime.py: _REBASE_AT, _REBASE_MS
REBASE_MS = 1 << 28
NEAR_WRAP_MS = (1 << 30) - 3000
STEP_MS = 250
STEPS = 240
WARM_UP = 4
KEY = b"wrap-key"


def run(start, rebase):
    leader = NodeApp(
        "fw-lead", "wrap", KEY, 1, cbor.dumps, cbor.loads, buffer_size=32, collector_size=64
    )
    leader.set_power(1000, 1000, True)
    leader.gateway_known = True
    members = Codec("wrap", KEY, cbor.dumps, cbor.loads, boot=1)
    names = ["member-%02d" % i for i in range(10)]
    now = start
    while rebase and now >= REBASE_AT:
        now -= REBASE_MS
    leader.start(now)
    total = 0
    seq = 0
    for step in range(STEPS):
        if rebase and now >= REBASE_AT:
            leader.rebase(now, REBASE_MS)
            now -= REBASE_MS
        # The members' frames of this step (their own nodes would encode them).
        term = leader.node.term
        frames = []
        for i in range(10):
            hb = Msg(HEARTBEAT, names[i], term, 0, 300 + i, 10 if term else 65535, 500, 800)
            frames.append(members.encode(hb))
        if step % 4 == 0 and leader.node.leader == "fw-lead":
            seq += 1
            for i in range(10):
                body = [[1, seq, 1790000000000 + step * STEP_MS, {"temp_mc": 21000, "rssi": -60}]]
                msg = Msg(READINGS, names[i], term, target="fw-lead", body=body)
                frames.append(members.encode(msg))
        acks = []
        for record in leader.collector._in_flight:
            body = [record[0], ACK_OK, term]
            acks.append(members.encode(Msg(BATCH_ACK, "gw", term, target="fw-lead", body=body)))
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        for frame in frames + acks:
            leader.frame(frame, ("10.0.0.2", 47470), now)
        if step % 4 == 0:
            leader.sample(now, 1790000000000 + step * STEP_MS, {"temp_mc": 22000})
        if now >= leader.wakeup:
            leader.tick(now)
        sent = 0
        for dest, _name, _kind, _frame in leader.out:
            sent += dest == DEST_GATEWAY
        del leader.out[:]
        del leader.events[:]
        used = gc.mem_alloc() - before
        gc.enable()
        if step >= WARM_UP:
            total += used
        now += STEP_MS
    return total, leader.collector.batches_acked, leader.errors


plain = run(0, False)
rebased = run(NEAR_WRAP_MS, True)
unrebased = run(NEAR_WRAP_MS, False)
print(
    json.dumps(
        {
            "steps": STEPS - WARM_UP,
            "bytes_from_0": plain[0],
            "bytes_rebased": rebased[0],
            "bytes_not_rebased": unrebased[0],
            "batches_acked": [plain[1], rebased[1], unrebased[1]],
            "errors": [plain[2], rebased[2], unrebased[2]],
        }
    )
)
