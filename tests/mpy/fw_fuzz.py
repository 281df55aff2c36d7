"""Fuzz the firmware's parsers under MicroPython: mDNS, MQTT and a whole frame into the node app.

usage: micropython fw_fuzz.py [ROUNDS]
Bounded: ROUNDS inputs per parser (default 3000). Every input must be either accepted or
dropped with a counted reason; any other exception is a failure (printed, exit 1). Prints one
JSON line with the counts per parser.
"""

import json
import sys

import cbor
import mdns
import mqtt

from agent.core.app import NodeApp
from agent.core.node import ROLE_NAMES

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000


class Lcg:
    """Deterministic bytes (the same on every run and runtime)."""

    def __init__(self, seed):
        self.s = seed & 0xFFFFFFFF

    def next(self):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return self.s >> 8

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes(self.below(256) for _ in range(n))


def mutate(rng, data):
    b = bytearray(data)
    for _ in range(1 + rng.below(4)):
        op = rng.below(4)
        if op == 0 and b:
            b[rng.below(len(b))] = rng.below(256)
        elif op == 1 and b:
            b = b[: rng.below(len(b))]  # truncate (MicroPython: no slice deletion)
        elif op == 2:
            at = rng.below(len(b) + 1)
            b = b[:at] + rng.bytes(1 + rng.below(8)) + b[at:]
        elif b:
            i = rng.below(len(b))
            b[i] = b[i] ^ (1 << rng.below(8))
    return bytes(b)


def loop_packet(kind):
    """DNS responses whose names loop through compression pointers."""
    head = b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00"
    if kind == 0:  # pointer to itself
        return head + b"\xc0\x0c" + b"\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x02\xc0\x0c"
    if kind == 1:  # two labels pointing at each other (forward pointer)
        return (
            head
            + b"\x01a\xc0\x10\x01b\xc0\x0c"
            + b"\x00\x01\x00\x01\x00\x00\x00\x78\x00\x04\x01\x02\x03\x04"
        )
    # rdata PTR pointing forward into itself
    return head + b"\x01x\x00" + b"\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x02\xc0\x1b"


def fuzz_mdns(rng):
    m = mdns.Mdns(
        "m-fz",
        "_meshelect._udp.local",
        47470,
        "10.0.0.9",
        {"mesh": "m", "node": "fz"},
        browse=["_meshelect._udp.local", "_mqtt._tcp.local"],
    )
    # Valid seeds: our own announcement and a browse query.
    seeds = [m.goodbye()] + [pkt for pkt, _dest in m.tick(0)]
    for k in range(3):
        m.receive(loop_packet(k), ("10.0.0.1", 5353), 1)
    loops = m.drops.get("loop", 0)
    for i in range(ROUNDS):
        data = rng.bytes(rng.below(64)) if i % 3 == 0 else mutate(rng, seeds[rng.below(len(seeds))])
        m.receive(data, ("10.0.0.1", 5353 if i % 2 else 40000), i)
        if i % 500 == 0:
            m.tick(i * 10)
    return {
        "loops": loops,
        "drops": sum([m.drops[k] for k in m.drops]),
        "services": len(m.services),
    }


def fuzz_mqtt(rng):
    seeds = [
        mqtt.encode_publish("a/b", b"payload", 1, False, 7),
        mqtt.encode_publish("x", b"", 0, True),
        b"\x40\x02\x00\x07",
        b"\x90\x03\x00\x01\x01",
        b"\xd0\x00",
    ]
    client = mqtt.MQTTClient("fz", "127.0.0.1", on_message=lambda t, p, r: None)
    accepted = errors = 0
    for i in range(ROUNDS):
        data = rng.bytes(rng.below(16)) if i % 4 == 0 else mutate(rng, seeds[rng.below(len(seeds))])
        try:
            got = mqtt.split_packet(data, len(data), 256)
        except mqtt.MqttError:
            errors += 1
            continue
        if got is None:
            continue  # needs more bytes: a stream would wait
        first, start, end = got
        client._dispatch(first, bytes(data[start:end]))
        accepted += 1
    return {
        "accepted": accepted,
        "length_errors": errors,
        "drops": sum([client.drops[k] for k in client.drops]),
    }


def board_app(name):
    """A node app as the firmware's runtime makes one (NodeApp's defaults are a board's)."""
    return NodeApp(name, "m", None, 1, cbor.dumps, cbor.loads)


def fuzz_frames(rng):
    # No mesh key: mutated frames then reach the CBOR decoder instead of failing the tag.
    node = board_app("fz")
    node.start(0)
    seeds = [f for _, _, _, f in node.out]
    other = board_app("peer")
    other.start(0)
    seeds += [f for _, _, _, f in other.out]
    for i in range(ROUNDS):
        data = rng.bytes(rng.below(48)) if i % 4 == 0 else mutate(rng, seeds[rng.below(len(seeds))])
        node.frame(data, ("10.0.0.2", 47470), i)
    drops = node.codec.drops
    return {
        "drops": sum([drops[k] for k in drops]),
        "malformed": drops["malformed"],
        "errors": node.errors,
        "role": ROLE_NAMES[node.node.role],
    }


rng = Lcg(12345)
result = {"mdns": fuzz_mdns(rng), "mqtt": fuzz_mqtt(rng), "frames": fuzz_frames(rng)}
print(json.dumps(result))
