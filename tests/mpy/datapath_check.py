"""The data path on both runtimes: run by tests/test_datapath.py under MicroPython and CPython.

usage: micropython tests/mpy/datapath_check.py [footprint]
       python tests/mpy/datapath_check.py [footprint]
(checkout root, and firmware/lib for MicroPython, on MICROPYPATH / PYTHONPATH)

A small seeded mesh (members, a leader that crashes with batches in flight, a new leader, a
restart, lost frames, a full ring) exchanges real frames (agent/core/wire.py with the firmware's
CBOR codec) and prints canonical lines: dicts sorted, nothing that depends on dict order or on
the interpreter. The test compares the two outputs line for line. The script checks the
exactly-once promise itself, then that memory stays flat over a long steady run.

``footprint`` runs only the data path (no simulated mesh, whose bookkeeping needs far more
heap than the data path itself) and prints ``figure:`` lines with the bytes it holds, for a
small heap (``-X heapsize=64K``) with the modules compiled by mpy-cross, as on a board.
"""

import gc
import sys

from agent.core.datapath import Collector, ReadingBuffer, batch_message, make_ack_messages
from agent.core.messages import BATCH_ACK, READINGS, READINGS_ACK, Msg
from agent.core.prng import Prng

# The codec is imported by scenario() only, so `footprint` measures the data path alone.
cbor = None
Codec = None
WireError = None
check_batch = None

MESH = "greenhouse"
KEY = b"datapath-check-key"
GATEWAY = "gw"
NODES = ("pi-1", "pi-2", "esp-3", "esp-4")
TICK_MS = 50


def canon(value):
    """repr with dict keys sorted, the same text on both runtimes."""
    if isinstance(value, dict):
        return "{%s}" % ", ".join("%s: %s" % (canon(k), canon(value[k])) for k in sorted(value))
    if isinstance(value, (list, tuple)):
        return "[%s]" % ", ".join(canon(v) for v in value)
    if isinstance(value, str):
        return "'%s'" % value
    return str(value)


class Mesh:
    def __init__(self, seed, capacity, loss):
        self.prng = Prng(seed)
        self.capacity = capacity
        self.loss = loss
        self.now = 0
        self.term = 0
        self.leader = None
        self.boot = {}
        self.buffers = {}
        self.codecs = {}
        self.collectors = {}
        self.view = {}
        self.blocked = []
        self.queue = []  # [deliver_at, serial, dst, frame], kept sorted
        self.serial = 0
        self.sampling = True
        self.taken = {}
        self.lost = {}  # readings in a crashed node's RAM
        self.dropped_total = 0
        self.gw_codec = Codec(MESH, KEY, cbor.dumps, cbor.loads, boot=1, check_batch=check_batch)
        self.gw_term = 0
        self.stored = {}
        self.duplicates = 0
        self.fenced = 0
        self.batches = 0
        self.first_batch = None
        self.first_confirmations = None
        self.frame_bytes = 0
        for node in NODES:
            self.boot[node] = 1
            self.start(node)
        self.elect("pi-1")

    def start(self, node):
        self.buffers[node] = ReadingBuffer(node, self.boot[node], self.capacity)
        # Leaders' batches are checked with the gateway's schema before they go out.
        self.codecs[node] = Codec(
            MESH, KEY, cbor.dumps, cbor.loads, boot=self.boot[node], check_batch=check_batch
        )
        self.view[node] = (self.leader, self.term)

    def elect(self, new):
        self.term += 1
        for node in sorted(self.buffers):
            if self.view[node][0] == node and node != new:
                self.collectors[node].lost_leadership()
            self.view[node] = (new, self.term)
        self.leader = new

    def crash(self, node):
        buffer = self.buffers.pop(node)
        for seq in buffer.unconfirmed():
            self.lost[(node, buffer.boot, seq)] = True
        self.dropped_total += buffer.dropped
        self.collectors.pop(node, None)
        del self.view[node]

    def restart(self, node):
        self.boot[node] += 1
        self.start(node)

    def run(self, ms):
        for _ in range(ms // TICK_MS):
            self.step()

    def step(self):
        self.now += TICK_MS
        while self.queue and self.queue[0][0] <= self.now:
            item = self.queue.pop(0)
            self.deliver(item[2], item[3])
        for node in sorted(self.buffers):
            self.act(node)

    def act(self, node):
        buffer = self.buffers[node]
        if self.sampling and (self.now // TICK_MS + len(node)) % 6 == 0:
            metrics = {"temp": self.prng.below(45000) - 5000, "rh": self.prng.below(1000)}
            seq = buffer.add(self.now, metrics)
            self.taken[(node, buffer.boot, seq)] = (self.now, metrics)
        leader, term = self.view[node]
        if leader == node:
            collector = self.collectors.get(node)
            if collector is None:
                collector = self.collectors[node] = Collector(node, MESH, 128)
            collector.pull_own(buffer, self.now, term)
            members = [[n, 100, 900, 800, 0, 0] for n in sorted(self.buffers)]
            while True:
                batch = collector.due_batch(self.now, term, members, None)
                if batch is None:
                    break
                if self.first_batch is None:
                    self.first_batch = batch
                self.send(node, GATEWAY, batch_message(node, term, batch))
        elif leader is not None:
            for msg in buffer.due_messages(self.now, leader, term):
                self.send(node, leader, msg)

    def send(self, src, dst, msg):
        codec = self.gw_codec if src == GATEWAY else self.codecs[src]
        frame = codec.encode(msg)
        self.frame_bytes += len(frame)
        if (src, dst) in self.blocked or self.prng.below(1000) < self.loss:
            return
        self.serial += 1
        at = self.now + 5 + self.prng.below(55)
        item = [at, self.serial, dst, frame]
        i = len(self.queue)
        while i > 0 and self.queue[i - 1][0] > at:
            i -= 1
        self.queue.insert(i, item)

    def deliver(self, dst, frame):
        if dst == GATEWAY:
            msg = self.decode(self.gw_codec, frame)
            if msg is not None:
                self.gateway(msg)
            return
        if dst not in self.buffers:
            return
        msg = self.decode(self.codecs[dst], frame)
        if msg is None:
            return
        if msg.kind == READINGS:
            if self.view[dst][0] == dst and dst in self.collectors:
                self.collectors[dst].add(msg)
        elif msg.kind == READINGS_ACK:
            self.buffers[dst].on_ack(msg)
        elif msg.kind == BATCH_ACK and dst in self.collectors:
            confirmations = self.collectors[dst].on_ack_msg(msg, self.now, self.buffers[dst])
            if confirmations and self.first_confirmations is None:
                self.first_confirmations = confirmations
            for ack in make_ack_messages(dst, self.view[dst][1], confirmations):
                self.send(dst, ack.target, ack)

    def gateway(self, msg):
        batch = msg.body
        if msg.term < self.gw_term:
            self.fenced += 1
            status = 1
        else:
            self.gw_term = msg.term
            self.batches += 1
            status = 0
            for row in batch["readings"]:
                key = (row[0], row[1], row[2])
                if key in self.stored:
                    self.duplicates += 1
                else:
                    self.stored[key] = (row[3], row[4])
        body = [batch["id"], status, self.gw_term]
        self.send(
            GATEWAY, msg.sender, Msg(BATCH_ACK, GATEWAY, msg.term, target=msg.sender, body=body)
        )

    def decode(self, codec, frame):
        try:
            return codec.decode(frame, self.now)
        except WireError:
            return None

    def settle(self):
        self.sampling = False
        self.loss = 0
        self.blocked = []
        for _ in range(4000):
            self.step()
            if not self.queue and not [1 for b in self.buffers.values() if b.depth]:
                return True
        return False

    def check(self):
        for key in self.stored:
            if self.taken[key] != self.stored[key]:
                return "changed %s" % canon(key)
        missing = 0
        for key in self.taken:
            if key not in self.stored and key not in self.lost:
                missing += 1
        dropped = self.dropped_total
        for node in self.buffers:
            dropped += self.buffers[node].dropped
        # Each reading not stored and not lost in a crash must be one a full ring dropped.
        if missing > dropped:
            return "missing %d > dropped %d" % (missing, dropped)
        return "ok"


def counters(obj, names):
    return " ".join("%s=%d" % (name, getattr(obj, name)) for name in names)


def import_codec():
    global cbor, Codec, WireError, check_batch
    try:
        import cbor  # firmware/lib on MICROPYPATH
    except ImportError:
        from firmware.lib import cbor
    from agent.core.batchcheck import check_batch
    from agent.core.wire import Codec, WireError


def scenario():
    import_codec()
    mesh = Mesh(seed=11, capacity=12, loss=150)
    mesh.run(3000)
    mesh.blocked.append((GATEWAY, "pi-1"))
    mesh.run(2500)
    print("pi-1 in flight at crash: %d" % mesh.collectors["pi-1"].in_flight)
    mesh.crash("pi-1")
    mesh.run(1000)
    mesh.elect("pi-2")
    mesh.blocked.append(("esp-4", "pi-2"))  # esp-4 cannot reach pi-2 for a while: overflow
    mesh.run(4000)
    mesh.blocked = []
    mesh.restart("pi-1")
    mesh.run(3000)
    settled = mesh.settle()
    print("settled: %s" % settled)
    print("first batch: %s" % canon(mesh.first_batch))
    print("first confirmations: %s" % canon(mesh.first_confirmations))
    for node in sorted(mesh.buffers):
        buffer = mesh.buffers[node]
        names = ("boot", "taken", "dropped", "sent", "resent", "confirmed", "depth")
        print("buffer %s %s" % (node, counters(buffer, names)))
    for node in sorted(mesh.collectors):
        names = ("received", "duplicates", "overflow", "batches_sent", "batches_resent")
        names += ("batches_acked", "batches_fenced", "stale_acks", "discarded")
        print("collector %s %s" % (node, counters(mesh.collectors[node], names)))
    print(
        "gateway batches=%d stored=%d duplicates=%d taken=%d lost_in_crash=%d frame_bytes=%d"
        % (
            mesh.batches,
            len(mesh.stored),
            mesh.duplicates,
            len(mesh.taken),
            len(mesh.lost),
            mesh.frame_bytes,
        )
    )
    print("exactly once: %s" % mesh.check())


def heap_used():
    gc.collect()
    try:
        return gc.mem_alloc()  # MicroPython
    except AttributeError:
        import tracemalloc

        return tracemalloc.get_traced_memory()[0]


def steady(buffer, collector, start, count):
    # A member and a leader in a loop with nothing lost: every cycle allocates and frees.
    for i in range(start, start + count):
        buffer.add(i, {"temp": i % 4000, "rh": 500})
        collector.add(buffer.due(i, "pi-1", 1), buffer.node)
        batch = collector.due_batch(i * 1000, 1, None, None)
        if batch is not None:
            for member, ranges in collector.on_batch_ack(batch["id"], 0, i * 1000):
                if member == buffer.node:
                    buffer.confirm(ranges)


def start_tracing():
    try:
        import tracemalloc  # CPython

        tracemalloc.start()
    except ImportError:
        pass


def memory():
    buffer = ReadingBuffer("esp-3", 1, 32)
    collector = Collector("pi-1", MESH, 64)
    steady(buffer, collector, 0, 300)
    before = heap_used()
    steady(buffer, collector, 300, 3000)
    grown = heap_used() - before
    # A leak of even a few bytes per reading would show as tens of kilobytes here.
    print("memory: %s" % ("bounded" if grown < 4096 else "grew by %d bytes" % grown))
    print("steady: depth=%d held=%d" % (buffer.depth, collector.held))


def footprint():
    """Bytes a full ReadingBuffer(64) and a full Collector(64) hold (interpreter-specific)."""
    base = heap_used()
    buffer = ReadingBuffer("esp-3", 1, 64)
    for i in range(64):
        buffer.add(i, {"temp": 21000 + i, "rh": 500})
    full_buffer = heap_used()
    collector = Collector("pi-1", MESH, 64)
    for first in range(1, 65, 16):
        readings = [[1, seq, seq, {"temp": seq, "rh": 500}] for seq in range(first, first + 16)]
        collector.add(readings, "esp-4")
    full_collector = heap_used()
    print("figure: ReadingBuffer(64) full of 2-metric readings: %d bytes" % (full_buffer - base))
    print(
        "figure: Collector(64) full of 2-metric readings: %d bytes" % (full_collector - full_buffer)
    )
    print("footprint: buffer depth=%d collector held=%d" % (buffer.depth, collector.held))
    del buffer, collector
    memory()


start_tracing()
if len(sys.argv) > 1 and sys.argv[1] == "footprint":
    footprint()
else:
    scenario()
    memory()
