"""The firmware's reused encode buffer under MicroPython: same frames, fewer bytes allocated.

usage: micropython fw_encoder.py   (MICROPYPATH: the repo root and firmware/lib)
Encodes the frames a leader sends (heartbeat, READINGS_ACK, a batch of about 1.2 KB) with
``cbor.dumps`` and with ``cbor.Encoder``, checks the bytes are equal, and measures the heap
each encode allocates (gc off while it runs). Prints one JSON line.
"""

import gc
import json

import cbor

from agent.core.messages import BATCH, HEARTBEAT, READINGS_ACK, Msg
from agent.core.wire import Codec

KEY = b"encoder-bench"
readings = []
for seq in range(6):
    node = "member-%02d" % (seq % 10)
    metrics = {"temp_mc": 21000 + seq, "hum_mpct": 40000, "bat_pm": 900, "rssi": -60}
    readings.append([node, 1, seq + 1, 1700000000000 + seq, metrics])
batch = {"id": 7, "mesh": "mem", "leader": "fw-lead", "readings": readings, "agg": []}
for r in readings:
    for name in sorted(r[4]):
        v = r[4][name]
        batch["agg"].append([r[0], name, 1, v, v, v])
messages = [
    Msg(HEARTBEAT, "fw-lead", 3, 1, 900, 65535, 800, 700),
    Msg(READINGS_ACK, "fw-lead", 3, target="member-01", body=[[1, 1, 30]]),
    Msg(BATCH, "fw-lead", 3, body=batch),
]
plain = Codec("mem", KEY, cbor.dumps, cbor.loads, boot=2)
encoder = cbor.Encoder(1400)
reused = Codec("mem", KEY, encoder.dumps, cbor.loads, boot=2)
same = True
sizes = []
allocated = {"plain": [], "reused": []}
for msg in messages:
    frames = []
    for name, codec in (("plain", plain), ("reused", reused)):
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        frame = codec.encode(msg)
        allocated[name].append(gc.mem_alloc() - before)
        gc.enable()
        frames.append(bytes(frame))
    same = same and frames[0] == frames[1]
    sizes.append(len(frames[0]))
print(json.dumps({"same": same, "frame_bytes": sizes, "allocated": allocated}))
