"""Random and mutated frames into the firmware CBOR decoder and the wire Codec (MicroPython).

    micropython wire_fuzz.py SEED COUNT

Every input must decode or raise the decoder's own error (``CBORDecodeError`` from
``cbor.loads``, ``WireError`` from ``Codec.decode``); anything else prints ``FAIL`` with the
input and exits 1. The loop is bounded by COUNT. Prints ``DONE`` with counts at the end.
"""

import random
import sys
from binascii import hexlify

import cbor

from agent.core import messages as m
from agent.core.batchcheck import check_batch
from agent.core.wire import Codec, WireError

MESH = "greenhouse"
KEY = b"fuzz-key"


def seeds():
    # Valid frames of every kind, with and without a key, to mutate.
    body = {
        "id": 3,
        "mesh": MESH,
        "leader": "pi-1",
        "readings": [["pi-2", 1, 2, 3, {"t": -5}]],
        "agg": [["pi-2", "t", 1, -5, -5, -5]],
        "members": [["pi-2", 10, 900, 800, 0, 5]],
        "dropped": [["pi-3", 1]],
        "elections": [[2, "pi-1", "crash"]],
    }
    msgs = [
        m.Msg(m.HEARTBEAT, "pi-1", term=2, flags=1, score=900, heard=4, battery=900, link=700),
        m.Msg(m.CLAIM, "pi-2", term=3, score=-7),
        m.Msg(m.HANDOFF, "pi-1", term=2, target="pi-2", flags=16),
        m.Msg(m.LEAVE, "pi-3", term=2),
        m.Msg(m.READINGS, "pi-2", term=2, target="pi-1", body=[[1, 2, 3, {"t": 20000}]]),
        m.Msg(m.READINGS_ACK, "pi-1", term=2, target="pi-2", body=[[1, 2, 5]]),
        m.Msg(m.BATCH, "pi-1", term=2, body=body),
        m.Msg(m.BATCH_ACK, "gw", term=2, target="pi-1", body=[3, 0, 2]),
    ]
    out = []
    for key in (None, KEY):
        tx = Codec(MESH, key, cbor.dumps, cbor.loads, boot=1, check_batch=check_batch)
        for msg in msgs:
            out.append(tx.encode(msg))
    return out


def rand_bytes(n):
    b = bytearray(n)
    for i in range(n):
        b[i] = random.getrandbits(8)
    return b


def mutate(frame):
    b = bytearray(frame)
    for _ in range(1 + random.getrandbits(2)):
        op = random.getrandbits(2)
        i = random.getrandbits(16) % (len(b) + 1)
        if op == 0 and i < len(b):
            b[i] ^= 1 << random.getrandbits(3)
        elif op == 1 and i < len(b):
            b[i] = random.getrandbits(8)
        elif op == 2:
            b = b[:i] + rand_bytes(1 + random.getrandbits(2)) + b[i:]
        else:
            b = b[:i]
    return bytes(b)


def main():
    random.seed(int(sys.argv[1]))
    count = int(sys.argv[2])
    frames = seeds()
    plain = Codec(MESH, None, cbor.dumps, cbor.loads, check_batch=check_batch)
    keyed = Codec(MESH, KEY, cbor.dumps, cbor.loads, check_batch=check_batch)
    decoded = 0
    accepted = 0
    for i in range(count):
        if i % 4 == 0:
            data = bytes(rand_bytes(random.getrandbits(6)))
        else:
            data = mutate(frames[i % len(frames)])
        try:
            try:
                cbor.loads(data)
                decoded += 1
            except cbor.CBORDecodeError:
                pass
            for c in (plain, keyed):
                try:
                    c.decode(data, i)
                    accepted += 1
                except WireError:
                    pass
        except Exception as e:  # the point: nothing else may escape
            print("FAIL %r %s" % (e, hexlify(data).decode()))
            sys.exit(1)
    drops = plain.drops
    parts = ["%s=%d" % (k, drops[k]) for k in sorted(drops)]
    print("DONE %d decoded=%d accepted=%d %s" % (count, decoded, accepted, " ".join(parts)))


main()
