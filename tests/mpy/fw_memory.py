"""Memory budget: a firmware node leading 10 members with full buffers, on the real core.

usage: micropython -X heapsize=128k fw_memory.py [SECONDS] [BUFFER] [COLLECTOR] [RATE] [GC]
Simulated time, deterministic. Ten members (frames encoded by one extra codec, as their own
nodes would send them) heartbeat every interval and send RATE readings (default 1) of 4
metrics per second each.
Phase 1 (first half): the gateway never answers, so the leader's own buffer and its collector
fill to their bounds. Phase 2: a gateway answers every batch OK, so readings flow and free.
After every step: gc.collect(), then gc.mem_alloc(); prints one JSON line with the peak.
"""

import gc
import json
import sys

gc.collect()
base_before_imports = gc.mem_alloc()
THRESHOLD = int(sys.argv[5]) if len(sys.argv) > 5 else 16384
if THRESHOLD:
    gc.threshold(THRESHOLD)  # as app.config.boot does: less fragmentation

import cbor

from agent.core.app import DEST_GATEWAY, NodeApp
from agent.core.messages import ACK_OK, BATCH_ACK, HEARTBEAT, READINGS, Msg
from agent.core.node import ROLE_NAMES
from agent.core.wire import Codec

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
BUFFER = int(sys.argv[2]) if len(sys.argv) > 2 else 64
COLLECTOR = int(sys.argv[3]) if len(sys.argv) > 3 else 128
RATE = int(sys.argv[4]) if len(sys.argv) > 4 else 1
MEMBERS = 10
HB = 250
KEY = b"memory-bench-key"

gc.collect()
after_imports = gc.mem_alloc()

# As the firmware's runtime makes it (firmware/app/runtime.py; NodeApp's defaults are a board's).
leader = NodeApp(
    "fw-lead", "bench", KEY, 1, cbor.dumps, cbor.loads, buffer_size=BUFFER, collector_size=COLLECTOR
)
leader.set_power(1000, 1000, True)
leader.gateway_known = True
members = Codec("bench", KEY, cbor.dumps, cbor.loads, boot=1)  # encodes for all ten
names = ["member-%02d" % i for i in range(MEMBERS)]
seqs = [0] * MEMBERS
src = ("10.94.0.50", 47470)

gc.collect()
peak = gc.mem_alloc()
peak_at = 0
sent_readings = 0
acked_batches = 0
leader.start(0)
end = SECONDS * 1000
now = 0
while now <= end:
    # Members: a heartbeat each interval, readings each second.
    term = leader.node.term
    for i in range(MEMBERS):
        hb = Msg(HEARTBEAT, names[i], term, 0, 300 + i, 10 if term else 65535, 500, 800)
        leader.frame(members.encode(hb), src, now)
        if now % 1000 == 0 and leader.node.leader == "fw-lead":
            readings = []
            for _ in range(RATE):
                seqs[i] += 1
                readings.append(
                    [
                        1,
                        seqs[i],
                        1700000000000 + now,
                        {"temp_mc": 21000 + seqs[i], "hum_mpct": 40000, "bat_pm": 900, "rssi": -60},
                    ]
                )
            msg = Msg(READINGS, names[i], term, target="fw-lead", body=readings)
            leader.frame(members.encode(msg), src, now)
            sent_readings += RATE
    if now % 1000 == 0:
        leader.sample(now, 1700000000000 + now, {"temp_mc": 22000, "mcu_mc": 40000})
    leader.tick(now)
    sent_batches = 0
    for dest, _name, _kind, _frame in leader.out:
        if dest == DEST_GATEWAY:
            sent_batches += 1
    del leader.out[:]
    del leader.events[:]
    if now > end // 2 and sent_batches:
        # The gateway is another machine: its decoding must not count against this heap, so
        # the bench answers from the leader's own record of the batches it has in flight.
        term = leader.node.term
        for batch_id in [record[0] for record in leader.collector._in_flight]:
            ack = Msg(BATCH_ACK, "gw", term, target="fw-lead", body=[batch_id, ACK_OK, term])
            leader.frame(members.encode(ack), src, now)
            acked_batches += 1
    gc.collect()
    used = gc.mem_alloc()
    if used > peak:
        peak = used
        peak_at = now
    now += HB

col = leader.collector
print(
    json.dumps(
        {
            "role": ROLE_NAMES[leader.node.role],
            "buffer": BUFFER,
            "collector": COLLECTOR,
            "rate": RATE,
            "gc_threshold": THRESHOLD,
            "members": len(leader.node.peers),
            "heap_before_imports": base_before_imports,
            "heap_after_imports": after_imports,
            "peak_heap": peak,
            "peak_at_ms": peak_at,
            "readings_sent": sent_readings,
            "collector_received": col.received,
            "collector_overflow": col.overflow,
            "collector_held": col.held,
            "own_buffer_depth": leader.buffer.depth,
            "own_buffer_dropped": leader.buffer.dropped,
            "batches_acked": col.batches_acked,
            "codec_drops": sum([leader.codec.drops[k] for k in leader.codec.drops]),
            "errors": leader.errors,
            "last_error": leader.last_error,
        }
    )
)
