"""The data path (agent/core/datapath.py): exactly once at the gateway, or the loss is counted.

Most tests drive an in-memory mesh (``MeshSim``): members with their ``ReadingBuffer``, leaders
with their ``Collector``, and a gateway sink that fences by term, stores each reading once and
counts the duplicates it drops. The election is scripted here (who leads in which term); every
message still goes through the real wire codec (agent/core/wire.py, cbor2, an HMAC key), so
frame sizes and field ranges are the real ones, and the sink validates batches with the real
gateway parser (gateway/batch.py). Delays and losses come from a seeded ``random.Random``.
"""

from __future__ import annotations

import heapq
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import strict_cbor
from agent.core import datapath
from agent.core.batchcheck import check_batch
from agent.core.datapath import (
    MAX_IN_FLIGHT,
    Collector,
    ReadingBuffer,
    batch_message,
    make_ack_messages,
    make_messages,
)
from agent.core.messages import (
    ACK_FENCED,
    ACK_OK,
    ACK_REJECTED,
    BATCH,
    BATCH_ACK,
    READINGS,
    READINGS_ACK,
    Msg,
)
from agent.core.wire import MAX_FRAME_BYTES, Codec, WireError
from gateway.batch import Batch, parse_batch
from testkit.mpy import compile_mpy, micropython_path, run_micropython
from tests.paths import MPY_SCRIPTS, REPO_ROOT

# Private consts on a board (no interned names): the tests read them as module attributes.
DROPPED_METRIC = datapath._DROPPED_METRIC
MAX_RANGES_PER_ACK = datapath._MAX_RANGES_PER_ACK
READINGS_FRAME_BYTES = datapath._READINGS_FRAME_BYTES

MESH = "greenhouse"
KEY = b"datapath-test-key"
GATEWAY = "gw"
TICK_MS = 50
Key = tuple[str, int, int]


# --------------------------------------------------------------------------- the in-memory mesh


class GatewaySink:
    """The gateway's ingest in miniature: fence lower terms, store each reading once."""

    def __init__(self) -> None:
        self.highest_term = 0
        self.stored: dict[Key, tuple[int, dict[str, int]]] = {}
        self.duplicates = 0  # readings it saw again and dropped (its dedup at work)
        self.fenced = 0
        self.batches: list[tuple[str, int, int]] = []  # (leader, batch id, readings) stored
        self.dropped: dict[str, int] = {}

    def receive(self, leader: str, term: int, body: Any) -> list[int]:
        batch = parse_batch(body, MESH, leader)  # the real gateway validator; raises if bad
        assert batch.leader == leader and batch.mesh == MESH
        check_aggregates(batch)
        if term < self.highest_term:
            self.fenced += 1
            return [batch.batch_id, ACK_FENCED, self.highest_term]
        self.highest_term = term
        for reading in batch.readings:
            key = (reading.node, reading.boot, reading.seq)
            if key in self.stored:
                self.duplicates += 1
            else:
                self.stored[key] = (reading.t_ms, reading.metrics)
        for node, count in batch.dropped:
            self.dropped[node] = count
        self.batches.append((leader, batch.batch_id, len(batch.readings)))
        return [batch.batch_id, ACK_OK, self.highest_term]


def check_aggregates(batch: Batch) -> None:
    """A batch's agg rows are exactly count/min/max/floor-mean of its own readings."""
    values: dict[tuple[str, str], list[int]] = {}
    for reading in batch.readings:
        for name, value in reading.metrics.items():
            values.setdefault((reading.node, name), []).append(value)
    expected = [
        [node, name, len(v), min(v), max(v), sum(v) // len(v)]
        for (node, name), v in sorted(values.items())
    ]
    assert [list(row) for row in batch.aggregates] == expected


class MeshSim:
    """Members, leaders and a gateway exchanging real frames through a lossy, delaying net."""

    def __init__(
        self,
        nodes: list[str],
        seed: int,
        capacity: int = 64,
        collector_capacity: int = 256,
        sample_ms: int = 300,
        loss: int = 0,
    ) -> None:
        self.rng = random.Random(seed)
        self.nodes = nodes
        self.now = 0
        self.loss = loss  # per-mille chance that one delivery is lost
        self.capacity = capacity
        self.collector_capacity = collector_capacity
        self.sample_ms = sample_ms
        self.sampling = True
        self.boot = dict.fromkeys(nodes, 1)
        self.alive = dict.fromkeys(nodes, False)
        self.buffers: dict[str, ReadingBuffer] = {}
        self.codecs: dict[str, Codec] = {}
        self.collectors: dict[str, Collector] = {}
        self.next_sample: dict[str, int] = {}
        self.group = dict.fromkeys(nodes, 0)  # partition: nodes hear only their own group
        self.view: dict[str, tuple[str | None, int]] = {}
        self.group_leader: dict[int, tuple[str | None, int]] = {0: (None, 0)}
        self.leader: str | None = None
        self.term = 0
        self.pending_elections: list[list[Any]] = []
        self.blocked: set[tuple[str, str]] = set()  # (src, dst) links that lose everything
        self.gateway = GatewaySink()
        self.gateway_codec = Codec(
            MESH, KEY, strict_cbor.dumps, strict_cbor.loads, boot=1, check_batch=check_batch
        )
        self.queue: list[tuple[int, int, str, bytes]] = []
        self.serial = 0  # heap tie-break, so equal times deliver in send order
        self.taken: dict[Key, tuple[int, dict[str, int]]] = {}
        self.dropped_keys: set[Key] = set()  # readings a full ring dropped
        self.lost_in_crash: set[Key] = set()  # unconfirmed readings in a crashed node's RAM
        self.retired_dropped = 0  # `dropped` counters of buffers lost in crashes
        self.frames = 0
        self.wire_drops = 0
        self.misrouted = 0  # READINGS that reached a node not leading (ignored)
        for node in nodes:
            self._boot_node(node)
        self.elect(nodes[0], "start")

    # -- scripted events ---------------------------------------------------------------

    def elect(self, new: str, reason: str) -> None:
        """``new`` leads in a new term, for the nodes of its group."""
        assert self.alive[new]
        self.term += 1
        self.leader = new
        group = self.group[new]
        self.group_leader[group] = (new, self.term)
        for node in self.nodes:
            if self.alive[node] and self.group[node] == group:
                was = self.view[node][0]
                self.view[node] = (new, self.term)
                if was == node and node != new:
                    self.collectors[node].lost_leadership()  # a handoff: it steps down
        self.pending_elections.append([self.term, new, reason])

    def crash(self, node: str) -> None:
        """Power loss: the node's RAM (buffer, collector) is gone."""
        buffer = self.buffers.pop(node)
        self.lost_in_crash.update((node, buffer.boot, seq) for seq in buffer.unconfirmed())
        self.retired_dropped += buffer.dropped
        self.collectors.pop(node, None)
        self.alive[node] = False

    def restart(self, node: str) -> None:
        self.boot[node] += 1
        self.group[node] = 0
        self._boot_node(node)

    def split(self, side: list[str]) -> None:
        """Partition ``side`` from the rest; the side without a live leader elects one."""
        for node in self.nodes:
            self.group[node] = 1 if node in side else 0
        self.group_leader = {0: (None, 0), 1: (None, 0)}
        for node in self.nodes:
            if self.alive[node] and self.view[node][0] == node:
                self.group_leader[self.group[node]] = self.view[node]
        for group in (0, 1):
            live = sorted(n for n in self.nodes if self.alive[n] and self.group[n] == group)
            if live and self.group_leader[group][0] is None:
                self.elect(live[0], "partition")

    def heal(self) -> None:
        """One mesh again: everybody follows the newest leader; older leaders step down."""
        self.group = dict.fromkeys(self.nodes, 0)
        self.group_leader = {0: (self.leader, self.term)}
        for node in self.nodes:
            if not self.alive[node]:
                continue
            if self.view[node][0] == node and node != self.leader:
                self.collectors[node].lost_leadership()
            self.view[node] = (self.leader, self.term)

    # -- time --------------------------------------------------------------------------

    def run(self, ms: int) -> None:
        for _ in range(ms // TICK_MS):
            self.step()

    def settle(self, max_ms: int = 180_000) -> None:
        """No more readings, no loss, one healed mesh with a live leader: drain everything."""
        self.sampling = False
        self.loss = 0
        self.blocked.clear()
        self.heal()
        if self.leader is None or not self.alive[self.leader]:
            self.elect(min(n for n in self.nodes if self.alive[n]), "settle")
        for _ in range(max_ms // TICK_MS):
            self.step()
            if not self.queue and all(b.depth == 0 for b in self.buffers.values()):
                return
        raise AssertionError("the data path did not drain: %r" % self.depths())

    def depths(self) -> dict[str, int]:
        return {node: buffer.depth for node, buffer in sorted(self.buffers.items())}

    def step(self) -> None:
        self.now += TICK_MS
        while self.queue and self.queue[0][0] <= self.now:
            _, _, dst, frame = heapq.heappop(self.queue)
            self._deliver(dst, frame)
        for node in self.nodes:
            if self.alive[node]:
                self._act(node)

    # -- the node's side -------------------------------------------------------------------

    def _boot_node(self, node: str) -> None:
        self.alive[node] = True
        self.buffers[node] = ReadingBuffer(node, self.boot[node], self.capacity)
        self.codecs[node] = Codec(  # batches checked with the schema before they go out
            MESH,
            KEY,
            strict_cbor.dumps,
            strict_cbor.loads,
            boot=self.boot[node],
            check_batch=check_batch,
        )
        self.next_sample[node] = self.now + self.rng.randrange(self.sample_ms)
        self.view[node] = self.group_leader.get(self.group[node], (None, 0))

    def _act(self, node: str) -> None:
        buffer = self.buffers[node]
        if self.sampling and self.now >= self.next_sample[node]:
            self.next_sample[node] += self.sample_ms
            self._sample(node, buffer)
        leader, term = self.view[node]
        if leader == node:
            collector = self.collectors.get(node)
            if collector is None:
                collector = Collector(node, MESH, self.collector_capacity)
                self.collectors[node] = collector
            collector.pull_own(buffer, self.now, term)
            elections, self.pending_elections = self.pending_elections, []
            while True:
                batch = collector.due_batch(self.now, term, self._members(), elections)
                elections = []
                if batch is None:
                    break
                self._send(node, GATEWAY, batch_message(node, term, batch))
            assert collector.held <= self.collector_capacity
            assert collector.in_flight <= MAX_IN_FLIGHT
        elif leader is not None:
            for msg in buffer.due_messages(self.now, leader, term):
                self._send(node, leader, msg)
        assert buffer.depth <= self.capacity

    def _sample(self, node: str, buffer: ReadingBuffer) -> None:
        metrics = {"temp": self.rng.randrange(-5000, 40000), "rh": self.rng.randrange(1000)}
        oldest = buffer.unconfirmed()[0] if buffer.depth == self.capacity else None
        before = buffer.dropped
        seq = buffer.add(self.now, metrics)
        self.taken[(node, buffer.boot, seq)] = (self.now, metrics)
        if buffer.dropped > before:
            assert oldest is not None
            self.dropped_keys.add((node, buffer.boot, oldest))

    def _members(self) -> list[list[Any]]:
        return [[n, 100, 900, 800, 0, 0] for n in self.nodes if self.alive[n]]

    # -- the network -------------------------------------------------------------------

    def _send(self, src: str, dst: str, msg: Msg) -> None:
        codec = self.gateway_codec if src == GATEWAY else self.codecs[src]
        frame = codec.encode(msg)  # raises if the data path built a frame peers refuse
        limit = MAX_FRAME_BYTES if msg.kind in (BATCH, BATCH_ACK) else READINGS_FRAME_BYTES
        assert len(frame) <= limit, (msg, len(frame))
        self.frames += 1
        if (src, dst) in self.blocked or self.rng.randrange(1000) < self.loss:
            return
        if GATEWAY not in (src, dst) and self.group[src] != self.group[dst]:
            return
        self.serial += 1
        heapq.heappush(self.queue, (self.now + self.rng.randint(5, 60), self.serial, dst, frame))

    def _deliver(self, dst: str, frame: bytes) -> None:
        if dst == GATEWAY:
            msg = self._decode(self.gateway_codec, frame)
            if msg is not None:
                answer = self.gateway.receive(msg.sender, msg.term, msg.body)
                ack = Msg(BATCH_ACK, GATEWAY, term=msg.term, target=msg.sender, body=answer)
                self._send(GATEWAY, msg.sender, ack)
            return
        if not self.alive[dst]:
            return
        msg = self._decode(self.codecs[dst], frame)
        if msg is None:
            return
        if msg.kind == READINGS:
            collector = self.collectors.get(dst)
            if collector is not None and self.view[dst][0] == dst:
                collector.add(msg)
            else:
                self.misrouted += 1
        elif msg.kind == READINGS_ACK:
            self.buffers[dst].on_ack(msg)
        elif msg.kind == BATCH_ACK:
            collector = self.collectors.get(dst)
            if collector is not None:
                confirmations = collector.on_ack_msg(msg, self.now, self.buffers[dst])
                for ack in make_ack_messages(dst, self.view[dst][1], confirmations):
                    self._send(dst, ack.target, ack)

    def _decode(self, codec: Codec, frame: bytes) -> Msg | None:
        try:
            return codec.decode(frame, self.now)
        except WireError:
            self.wire_drops += 1
            return None

    # -- the promise ---------------------------------------------------------------------

    def check_exactly_once(self) -> None:
        """Every reading taken reached the gateway once, or its loss is accounted for."""
        stored = self.gateway.stored
        for key, value in stored.items():
            assert self.taken[key] == value, key  # stored intact, and only what was taken
        missing = self.taken.keys() - stored.keys()
        unaccounted = missing - self.dropped_keys - self.lost_in_crash
        assert not unaccounted, sorted(unaccounted)[:10]
        total_dropped = self.retired_dropped + sum(b.dropped for b in self.buffers.values())
        assert len(self.dropped_keys) == total_dropped
        for node, buffer in self.buffers.items():
            assert buffer.depth == 0, node


# ------------------------------------------------------------------------ scenarios in the mesh


NODES = ["pi-1", "pi-2", "esp-3", "esp-4"]


def test_normal_flow_delivers_every_reading_once_without_resends() -> None:
    sim = MeshSim(NODES, seed=1)
    sim.run(10_000)
    sim.settle()
    sim.check_exactly_once()
    assert len(sim.gateway.stored) == len(sim.taken) > 100
    assert sim.gateway.duplicates == 0
    assert all(b.resent == 0 and b.dropped == 0 for b in sim.buffers.values())
    assert not sim.lost_in_crash
    # Readings travel in batches, not one by one.
    assert len(sim.gateway.batches) < len(sim.taken) / 5


def test_leader_crash_with_batches_in_flight_loses_nothing_and_the_gateway_dedups() -> None:
    sim = MeshSim(NODES, seed=2)
    sim.run(3000)
    # The gateway stores the leader's batches but its acks never arrive: batches in flight.
    sim.blocked.add((GATEWAY, "pi-1"))
    sim.run(2500)
    in_flight = sim.collectors["pi-1"].in_flight
    assert in_flight == MAX_IN_FLIGHT
    stored_unconfirmed = len(sim.gateway.stored)
    sim.crash("pi-1")
    sim.run(1000)  # members still send to the dead leader until a new one is agreed
    sim.elect("pi-2", "crash")
    sim.run(5000)
    sim.settle()
    sim.check_exactly_once()
    # The members resent what the dead leader had batched: the gateway dropped those again.
    assert sim.gateway.duplicates > 0
    assert stored_unconfirmed > 0
    # Only the crashed node's own RAM is lost, and only what the gateway never got.
    assert all(key[0] == "pi-1" for key in sim.taken.keys() - sim.gateway.stored.keys())


def test_leader_restart_and_handoff_back() -> None:
    sim = MeshSim(NODES, seed=3)
    sim.run(2000)
    sim.crash("pi-1")
    sim.run(600)
    sim.elect("pi-2", "crash")
    sim.run(2000)
    sim.restart("pi-1")  # boot 2: a fresh buffer and, later, a fresh collector
    sim.run(2000)
    sim.elect("pi-1", "handoff")  # a graceful handoff back to the restarted node
    sim.run(4000)
    sim.settle()
    sim.check_exactly_once()
    # Batch ids are per leader boot: pi-1's second boot counts from 1 again.
    ids = [batch_id for leader, batch_id, _ in sim.gateway.batches if leader == "pi-1"]
    assert ids.count(1) == 2


def test_graceful_handoff_loses_nothing_at_all() -> None:
    sim = MeshSim(NODES, seed=4)
    sim.run(3000)
    sim.blocked.add((GATEWAY, "pi-1"))  # the handoff comes with batches still in flight
    sim.run(1500)
    sim.blocked.clear()
    sim.elect("pi-2", "handoff")
    sim.run(4000)
    sim.settle()
    sim.check_exactly_once()
    assert sim.gateway.stored.keys() == sim.taken.keys()
    assert sim.collectors["pi-1"].discarded > 0


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_random_loss_of_readings_and_acks_is_recovered(seed: int) -> None:
    sim = MeshSim(NODES, seed=seed, loss=250)
    sim.run(15_000)
    sim.settle()
    sim.check_exactly_once()
    assert sim.gateway.stored.keys() == sim.taken.keys()
    assert sum(b.resent for b in sim.buffers.values()) > 0
    assert sum(c.batches_resent for c in sim.collectors.values()) > 0


def test_overflow_drops_the_oldest_counts_it_and_reports_it() -> None:
    sim = MeshSim(NODES, seed=8, capacity=6)
    sim.run(1000)
    for node in NODES[1:]:
        sim.blocked.add((node, "pi-1"))  # members cannot reach the leader for a while
    sim.run(4000)
    sim.blocked.clear()
    sim.run(3000)
    sim.settle()
    sim.check_exactly_once()
    assert sim.dropped_keys
    dropped = {node: b.dropped for node, b in sim.buffers.items() if b.dropped}
    assert set(dropped) == set(NODES[1:])
    assert sim.gateway.dropped == dropped  # running totals reached the gateway


def test_split_brain_old_leader_is_fenced_and_its_members_resend_after_heal() -> None:
    sim = MeshSim(NODES, seed=9)
    sim.run(2000)
    sim.split(["esp-3", "esp-4"])  # esp-3 leads that side in term 2; pi-1 keeps term 1
    sim.run(5000)
    old = sim.collectors["pi-1"]
    assert sim.gateway.fenced > 0 and old.batches_fenced > 0
    assert old.fenced_term == 2
    fenced_batches = old.batches_sent
    sim.run(3000)
    assert old.batches_sent == fenced_batches  # fenced: it stopped batching
    assert sim.buffers["pi-2"].depth > 0  # pi-2 follows pi-1: its readings wait at pi-2
    sim.settle()
    sim.check_exactly_once()
    assert sim.gateway.stored.keys() == sim.taken.keys()


# ------------------------------------------------------------------------- property over chaos

OPS = ["crash_leader", "handoff", "crash_member", "restart", "split", "heal", "loss", "block"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    capacity=st.sampled_from([4, 16, 64]),
    collector_capacity=st.sampled_from([8, 256]),
    schedule=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 999)), max_size=10),
)
def test_property_everything_not_counted_as_dropped_arrives_exactly_once(
    seed: int, capacity: int, collector_capacity: int, schedule: list[tuple[str, int]]
) -> None:
    sim = MeshSim(NODES, seed, capacity, collector_capacity, loss=50)
    for op, arg in schedule:
        sim.run(1000 + arg)
        sim.blocked.clear()
        apply_op(sim, op, arg)
    sim.run(2000)
    sim.settle()
    sim.check_exactly_once()


def apply_op(sim: MeshSim, op: str, arg: int) -> None:
    alive = sorted(n for n in sim.nodes if sim.alive[n])
    dead = sorted(n for n in sim.nodes if not sim.alive[n])
    leader = sim.leader if sim.leader in alive else None
    others = [n for n in alive if n != leader]
    if op == "crash_leader" and leader is not None and others:
        sim.crash(leader)
        sim.run(500)
        sim.elect(others[arg % len(others)], "crash")
    elif op == "handoff" and leader is not None and others:
        new = others[arg % len(others)]
        if sim.group[new] == sim.group[leader]:
            sim.elect(new, "handoff")
    elif op == "crash_member" and len(others) > 1:
        sim.crash(others[arg % len(others)])
    elif op == "restart" and dead:
        sim.restart(dead[arg % len(dead)])
    elif op == "split" and len(alive) > 1:
        sim.split([n for i, n in enumerate(sim.nodes) if arg >> i & 1])
    elif op == "heal":
        sim.heal()
    elif op == "loss":
        sim.loss = arg % 400
    elif op == "block" and leader is not None:
        sim.blocked.add((GATEWAY, leader))


# ----------------------------------------------------------------------------- ReadingBuffer


def test_buffer_overflow_drops_the_oldest_and_reports_the_total() -> None:
    buffer = ReadingBuffer("esp-3", 7, 3)
    seqs = [buffer.add(100 * i, {"temp": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert (buffer.depth, buffer.dropped, buffer.unconfirmed()) == (3, 2, [3, 4, 5])
    due = buffer.due(1000, "pi-1", 1)
    assert [r[1] for r in due] == [3, 4, 5]
    assert due[0][3] == {"temp": 2, DROPPED_METRIC: 2}  # the running total rides along
    assert due[1][3] == {"temp": 3}


def test_buffer_due_resends_after_timeout_and_everything_on_leader_change() -> None:
    buffer = ReadingBuffer("esp-3", 1, 8, resend_ms=1000)
    for i in range(3):
        buffer.add(i, {"temp": i})
    assert buffer.due(0, None, 1) == []  # no leader known: nothing goes anywhere
    assert [r[1] for r in buffer.due(0, "pi-1", 1, max_count=2)] == [1, 2]
    assert buffer.wakeup == 0  # one more is due right away
    assert [r[1] for r in buffer.due(10, "pi-1", 1)] == [3]
    assert buffer.due(500, "pi-1", 1) == []
    assert buffer.wakeup == 1000
    assert [r[1] for r in buffer.due(1000, "pi-1", 1)] == [1, 2]  # unconfirmed for resend_ms
    assert buffer.resent == 2
    buffer.confirm([[1, 1, 1]])
    assert [r[1] for r in buffer.due(1001, "pi-2", 2)] == [2, 3]  # new leader: all again
    assert [r[1] for r in buffer.due(1002, "pi-2", 3)] == [2, 3]  # new term: all again
    assert buffer.due(1003, "pi-2", 3) == []


def test_buffer_confirm_frees_out_of_order_ranges_and_ignores_the_rest() -> None:
    buffer = ReadingBuffer("esp-3", 4, 8)
    for i in range(6):
        buffer.add(i, {"temp": i})
    assert buffer.confirm([[4, 2, 3], [4, 5, 5]]) == 3
    assert buffer.unconfirmed() == [1, 4, 6]
    assert buffer.confirm([[3, 1, 6], [4, 50, 60], [4, 0, 2**40]]) == 3  # old boot; beyond
    assert buffer.unconfirmed() == []
    assert buffer.ignored_ranges == 2
    assert buffer.confirm([[4, 1, 6]]) == 0  # twice is harmless
    buffer.add(9, {"temp": 9})
    assert buffer.unconfirmed() == [7]


def test_buffer_holes_never_cost_capacity() -> None:
    buffer = ReadingBuffer("esp-3", 1, 4)
    for i in range(4):
        buffer.add(i, {"temp": i})
    buffer.confirm([[1, 2, 3]])  # seq 1 was lost on the way and waits for its resend
    for i in range(4, 6):
        buffer.add(i, {"temp": i})
    assert (buffer.unconfirmed(), buffer.dropped) == ([1, 4, 5, 6], 0)
    buffer.confirm([[1, 5, 5]])
    buffer.add(7, {"temp": 7})
    assert (buffer.unconfirmed(), buffer.dropped) == ([1, 4, 6, 7], 0)
    buffer.add(8, {"temp": 8})  # now four readings wait: the oldest goes
    assert (buffer.unconfirmed(), buffer.dropped) == ([4, 6, 7, 8], 1)
    assert [r[1] for r in buffer.due(0, "pi-1", 1)] == [4, 6, 7, 8]
    assert buffer.confirm([[1, 0, 100]]) == 4 and buffer.depth == 0


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"temp": 1.5},
        {"temp": True},
        {"temp": "21"},
        {"": 1},
        {"x" * 17: 1},
        {"_dropped": 1},
        {1: 1},
        {"temp": 2**53},
        {"m%d" % i: i for i in range(9)},
        [("temp", 1)],
    ],
)
def test_buffer_add_refuses_bad_metrics_with_a_clear_error(metrics: Any) -> None:
    buffer = ReadingBuffer("esp-3", 1, 4)
    with pytest.raises(ValueError, match="bad metrics"):
        buffer.add(0, metrics)
    assert buffer.depth == 0 and buffer.taken == 0


def test_buffer_add_refuses_bad_times_and_keeps_a_copy() -> None:
    buffer = ReadingBuffer("esp-3", 1, 4)
    for t_ms in (-1, 1.0, None, 2**53):
        with pytest.raises(ValueError, match="t_ms"):
            buffer.add(t_ms, {"temp": 1})
    metrics = {"temp": 1}
    buffer.add(0, metrics)
    metrics["temp"] = 2  # the caller reuses its dict
    assert buffer.due(0, "pi-1", 1)[0][3] == {"temp": 1}


def test_buffer_memory_is_bounded_by_capacity() -> None:
    buffer = ReadingBuffer("esp-3", 1, 16)
    for i in range(10_000):
        buffer.add(i, {"temp": i})
        if i % 7 == 0:
            buffer.due(i, "pi-1", 1)
    assert buffer.depth == 16 and buffer.dropped == 10_000 - 16
    assert len(buffer._seq) == len(buffer._t) == len(buffer._metrics) == 16
    assert len(buffer._sent_at) == 16


def test_buffer_on_ack_only_takes_acks_for_this_node() -> None:
    buffer = ReadingBuffer("esp-3", 1, 4)
    buffer.add(0, {"temp": 1})
    buffer.due(0, "pi-1", 1)
    ack = [[1, 1, 1]]
    assert buffer.on_ack(Msg(READINGS_ACK, "pi-1", term=1, target="esp-4", body=ack)) == -1
    assert buffer.on_ack(Msg(READINGS, "pi-1", term=1, target="esp-3", body=ack)) == -1
    assert buffer.foreign_acks == 0
    assert buffer.on_ack(Msg(READINGS_ACK, "pi-1", term=1, target="esp-3", body=ack)) == 1


def test_buffer_takes_acks_only_from_the_leader_and_term_it_sent_to() -> None:
    """A key holder's ack, a deposed leader's, or one for readings not sent frees nothing."""
    buffer = ReadingBuffer("esp-3", 1, 8)
    for t in range(3):
        buffer.add(t, {"temp": t})
    assert [r[1] for r in buffer.due(10, "pi-1", 4)] == [1, 2, 3]
    buffer.add(11, {"temp": 9})  # seq 4: not sent yet
    everything = [[1, 0, 0xFFFFFFFF]]
    for sender, term in (("forger", 4), ("pi-2", 4), ("pi-1", 3), ("pi-1", 5)):
        msg = Msg(READINGS_ACK, sender, term=term, target="esp-3", body=everything)
        assert buffer.on_ack(msg) == -1
    assert buffer.foreign_acks == 4
    assert buffer.depth == 4
    # The leader it sent to frees what it sent, not the reading it never saw.
    assert buffer.on_ack(Msg(READINGS_ACK, "pi-1", term=4, target="esp-3", body=everything)) == 3
    assert buffer.unconfirmed() == [4]
    # A new leader: the old one's late ack is not taken; the readings go to the new one.
    assert [r[1] for r in buffer.due(20, "pi-2", 5)] == [4]
    assert buffer.on_ack(Msg(READINGS_ACK, "pi-1", term=4, target="esp-3", body=everything)) == -1
    assert buffer.on_ack(Msg(READINGS_ACK, "pi-2", term=5, target="esp-3", body=everything)) == 1
    assert buffer.depth == 0


garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(body=garbage)
def test_buffer_and_collector_never_raise_on_garbage(body: Any) -> None:
    buffer = ReadingBuffer("esp-3", 1, 4)
    buffer.add(0, {"temp": 1})
    buffer.confirm(body)
    buffer.on_ack(Msg(READINGS_ACK, "pi-1", target="esp-3", body=body))
    collector = Collector("pi-1", MESH, 8)
    collector.add(Msg(READINGS, "esp-3", target="pi-1", body=body))
    collector.add(body, "esp-3")
    collector.add([body, [1, 1, 1, body], [1, 2, 3, {"temp": body}]], "esp-3")
    collector.on_ack_msg(Msg(BATCH_ACK, GATEWAY, target="pi-1", body=body), 0)
    batch = collector.due_batch(0, 1, [body, ["esp-3", body, 1, 1, 1, 1]], [body])
    assert batch is not None
    parse_batch(batch, MESH, "pi-1")  # whatever came in, what goes out is a valid batch
    assert collector.held <= 8


# ---------------------------------------------------------------------------------- Collector


def test_collector_refuses_dropped_totals_the_wire_could_not_carry() -> None:
    collector = Collector("pi-1", MESH, 8)
    bad = [[1, 1, 0, {"t": 1, DROPPED_METRIC: 2**64}], [1, 2, 0, {"t": 1, DROPPED_METRIC: -1}]]
    assert collector.add(bad, "esp-3") == 0 and collector.invalid == 2
    assert collector.add([[1, 3, 0, {"t": 1, DROPPED_METRIC: 5}]], "esp-3") == 1
    batch = collector.due_batch(0, 1)
    assert batch is not None
    assert batch["dropped"] == [["esp-3", 5]] and batch["readings"][0][4] == {"t": 1}


def test_collector_dedups_what_it_holds_and_refuses_when_full() -> None:
    collector = Collector("pi-1", MESH, 3)
    readings = [[1, seq, seq, {"temp": seq}] for seq in (1, 2)]
    assert collector.add(readings, "esp-3") == 2
    assert collector.add(readings, "esp-3") == 0
    assert collector.duplicates == 2
    assert collector.add([[1, 3, 3, {"temp": 3}], [1, 4, 4, {"temp": 4}]], "esp-3") == 1
    assert (collector.held, collector.overflow) == (3, 1)
    wrong = Msg(READINGS, "esp-4", target="pi-2", body=[[1, 9, 9, {"temp": 9}]])
    assert collector.add(wrong) == 0 and collector.wrong_target == 1


@pytest.mark.parametrize("seed", range(20))
def test_collector_dedup_matches_a_plain_set_of_names(seed: int) -> None:
    """The collector keeps no index of held names (only each node's newest seq): whatever
    order readings come in (resends, out of order, two boots with the same seqs, more nodes
    than the newest-seq table keeps, batches acked, rejected or fenced), it takes a reading
    exactly when a plain set of the names it holds says it is new."""
    rng = random.Random(seed)
    nodes = ["n%02d" % i for i in range(80)] if seed % 2 else ["a", "b", "c"]
    collector = Collector("pi-1", MESH, 48, batch_ms=0)
    held: set[tuple[str, int, int]] = set()
    in_flight: dict[int, list[tuple[str, int, int]]] = {}
    for _ in range(400):
        op = rng.random()
        if op < 0.7:
            node = rng.choice(nodes)
            boot = rng.choice((1, 1, 1, 2))
            seq = rng.randint(1, 12)
            new = (node, boot, seq) not in held and len(held) < 48
            assert collector.add([[boot, seq, seq, {"v": seq, "w": boot}]], node) == int(new)
            if new:
                held.add((node, boot, seq))
        elif op < 0.85:
            batch = collector.due_batch(rng.randint(0, 10**6), 1)
            if batch is not None and batch["id"] not in in_flight:
                names = [(r[0], r[1], r[2]) for r in batch["readings"]]
                assert all(name in held for name in names)
                in_flight[batch["id"]] = names
        elif in_flight:
            batch_id = rng.choice(sorted(in_flight))
            status = rng.choice((ACK_OK, ACK_OK, ACK_REJECTED, ACK_FENCED))
            collector.on_batch_ack(batch_id, status, 0)
            if status == ACK_FENCED:
                held.clear()
                in_flight.clear()
                collector.fenced_term = None  # the next batch may go out (a new term)
            else:
                held.difference_update(in_flight.pop(batch_id))
        assert collector.held == len(held)


def test_a_collector_with_one_batch_in_flight_waits_for_its_ack() -> None:
    # The firmware's setting (firmware/app/runtime.py): one batch in flight at a time.
    collector = Collector("esp-1", MESH, 64, batch_ms=1000, batch_resend_ms=2000, max_in_flight=1)
    collector.add([[1, 1, 10, {"temp": 5}]], "esp-3")
    first = collector.due_batch(0, 3)
    assert first is not None and collector.in_flight == 1
    collector.add([[1, 2, 20, {"temp": 6}]], "esp-3")
    assert collector.due_batch(1500, 3) is None  # the second waits for the first's ack
    assert collector.due_batch(2000, 3) == first  # resent, still alone in flight
    assert collector.on_batch_ack(first["id"], ACK_OK, 2001) == [("esp-3", [[1, 1, 1]])]
    second = collector.due_batch(2002, 3)
    assert second is not None and [r[2] for r in second["readings"]] == [2]
    calls: list[int] = []

    def view(now: int) -> list[list[Any]]:
        calls.append(now)
        return [["esp-1", 5, 900, 800, 1, 0]]

    assert collector.due_batch(2100, 3, view) is None and calls == []  # nothing new: not built
    collector.add([[1, 3, 30, {"temp": 7}]], "esp-3")
    assert collector.on_batch_ack(second["id"], ACK_OK, 2101) == [("esp-3", [[1, 2, 2]])]
    third = collector.due_batch(5000, 3, view)
    assert third is not None and calls == [5000] and third["members"] == view(0)
    with pytest.raises(ValueError, match="max_in_flight"):
        Collector("esp-1", MESH, 64, max_in_flight=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        Collector("esp-1", MESH, 64, max_in_flight=datapath.MAX_IN_FLIGHT + 1)


def test_collector_batches_on_time_or_size_resends_with_the_same_id() -> None:
    collector = Collector("pi-1", MESH, 256, batch_ms=1000, batch_resend_ms=2000)
    first = collector.due_batch(0, 3, [["pi-1", 5, 900, 800, 1, 0]], [[3, "pi-1", "start"]])
    assert first is not None and first["readings"] == []  # the new leader's mesh view
    assert first["elections"] == [[3, "pi-1", "start"]]
    collector.add([[1, 1, 10, {"temp": 5}]], "esp-3")
    assert collector.due_batch(500, 3) is None  # batch_ms not over, few readings
    second = collector.due_batch(1000, 3)
    assert second is not None and second["id"] == first["id"] + 1
    assert collector.due_batch(1001, 3) is None  # MAX_IN_FLIGHT (2) batches wait
    assert collector.due_batch(2000, 3) == first  # resent: the same id, the same content
    assert collector.due_batch(2001, 3) is None
    assert collector.on_batch_ack(first["id"], ACK_OK, 2002) == []
    many = [[1, seq, seq, {"temp": seq}] for seq in range(2, 2 + datapath.BATCH_MAX_READINGS)]
    for start in range(0, len(many), 32):
        collector.add(many[start : start + 32], "esp-4")
    third = collector.due_batch(2003, 3)  # enough readings wait: no need to wait batch_ms
    assert third is not None and len(third["readings"]) == datapath.BATCH_MAX_READINGS
    assert collector.batches_resent == 1


def test_collector_ack_confirms_each_member_in_compact_ranges() -> None:
    collector = Collector("pi-1", MESH, 256)
    collector.add([[2, 5, 0, {"t": 1}], [2, 7, 0, {"t": 1}], [2, 6, 0, {"t": 1}]], "esp-3")
    collector.add([[1, 9, 0, {"t": 1}], [2, 1, 0, {"t": 1}]], "esp-3")
    odd = [[1, seq, 0, {"t": 1}] for seq in range(1, 70, 2)]
    collector.add(odd[:20], "esp-4")
    collector.add(odd[20:], "esp-4")
    own = ReadingBuffer("pi-1", 1, 8)
    own.add(0, {"t": 1})
    collector.pull_own(own, 0, 1)
    batch = collector.due_batch(0, 1)
    assert batch is not None
    confirmations = collector.on_batch_ack(batch["id"], ACK_OK, 10, own_buffer=own)
    assert own.depth == 0  # the leader's own readings were confirmed directly
    assert confirmations[0] == ("esp-3", [[1, 9, 9], [2, 1, 1], [2, 5, 7]])
    esp4 = [ranges for member, ranges in confirmations if member == "esp-4"]
    assert [len(r) for r in esp4] == [MAX_RANGES_PER_ACK, 35 - MAX_RANGES_PER_ACK]
    assert collector.held == 0
    assert collector.on_batch_ack(batch["id"], ACK_OK, 11) == []  # a second ack is stale
    assert collector.stale_acks == 1
    for msg in make_ack_messages("pi-1", 1, confirmations):
        Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads).encode(
            msg
        )  # every ack frame is one the wire accepts


def test_collector_fenced_ack_discards_and_stops_until_a_newer_term() -> None:
    collector = Collector("pi-1", MESH, 16)
    collector.add([[1, 1, 0, {"t": 1}]], "esp-3")
    batch = collector.due_batch(0, 4)
    assert batch is not None
    collector.add([[1, 2, 0, {"t": 1}]], "esp-3")
    ack = Msg(BATCH_ACK, GATEWAY, term=4, target="pi-1", body=[batch["id"], ACK_FENCED, 6])
    assert collector.on_ack_msg(ack, 10) == []
    assert (collector.held, collector.in_flight, collector.discarded) == (0, 0, 2)
    assert collector.fenced_term == 6
    collector.add([[1, 3, 0, {"t": 1}]], "esp-3")
    assert collector.due_batch(60_000, 6) is None  # no batch in a term the gateway fences
    again = collector.due_batch(60_000, 7)
    assert again is not None and [r[2] for r in again["readings"]] == [3]


def test_collector_rejected_batch_is_released_for_the_members_to_resend() -> None:
    collector = Collector("pi-1", MESH, 16)
    collector.add([[1, 1, 0, {"t": 1}]], "esp-3")
    batch = collector.due_batch(0, 1)
    assert batch is not None
    assert collector.on_batch_ack(batch["id"], ACK_REJECTED, 5) == []
    assert (collector.held, collector.batches_rejected) == (0, 1)
    assert collector.add([[1, 1, 0, {"t": 1}]], "esp-3") == 1  # taken again on resend


def test_collector_lost_leadership_discards_everything_held() -> None:
    collector = Collector("pi-1", MESH, 16)
    collector.add([[1, 1, 0, {"t": 1}], [1, 2, 0, {"t": 1}]], "esp-3")
    batch = collector.due_batch(0, 1)
    assert batch is not None
    collector.add([[1, 3, 0, {"t": 1}]], "esp-3")
    collector.lost_leadership()
    assert (collector.held, collector.in_flight, collector.discarded) == (0, 0, 3)
    assert collector.on_batch_ack(batch["id"], ACK_OK, 5) == []  # too late: members resend


def test_aggregates_are_integers_with_floor_mean_sorted_by_node_and_metric() -> None:
    collector = Collector("pi-1", MESH, 16)
    collector.add([[1, 1, 0, {"t": -1, "h": 3}], [1, 2, 0, {"t": -2}]], "esp-4")
    collector.add([[1, 1, 0, {"t": 7}]], "esp-3")
    batch = collector.due_batch(0, 1)
    assert batch is not None
    assert batch["agg"] == [
        ["esp-3", "t", 1, 7, 7, 7],
        ["esp-4", "h", 1, 3, 3, 3],
        ["esp-4", "t", 2, -2, -1, -2],  # floor(-3 / 2), the same on both runtimes
    ]


def test_big_mesh_views_are_reported_in_turns() -> None:
    collector = Collector("pi-1", MESH, 16, batch_idle_ms=0)
    members = [["n%02d" % i, i, 900, 800, 0, 0] for i in range(30)]
    seen: set[str] = set()
    for now in (0, 1, 2):
        batch = collector.due_batch(now, 1, members)
        assert batch is not None and len(batch["members"]) == datapath._MAX_MEMBERS
        seen.update(row[0] for row in batch["members"])
        collector.on_batch_ack(batch["id"], ACK_OK, now)
    assert len(seen) == 30
    assert collector.due_batch(3, 1, [["n1", 2**40, 0, 0, 0, 0]])["members"] == []


def test_mesh_view_rows_are_checked_with_the_batch_schema() -> None:
    """The collector keeps out of its batches the members and elections rows that the batch
    schema (the gateway's check) refuses, and, for elections, reasons over the 16 bytes that
    its frame budget allows."""
    collector = Collector("pi-1", MESH, 8)
    collector.add([[1, 1, 0, {"t": 1}]], "esp-3")
    members = [["a", 900, 900, 900, 0, 0], ["b", 2**31, 0, 0, 0, 0], ("c", 1, 1, 1, 1, 1)]
    elections = [[3, "pi-1", "start"], [2, None, 7], [1, "pi-1", ""], [1, "pi-1", "r" * 17]]
    batch = collector.due_batch(0, 3, members, elections)
    assert batch is not None
    assert [row[0] for row in batch["members"]] == ["a", "c"]
    assert batch["elections"] == [[3, "pi-1", "start"], [2, None, 7]]
    assert collector.invalid_view == 3
    assert check_batch(batch) is None


# -------------------------------------------------------------------------- frames and sizes

WORST_METRICS = {"m%015d" % i: -datapath._MAX_VALUE for i in range(datapath._MAX_METRICS)}
WORST_ID = "x" * datapath._MAX_NAME_BYTES
WORST_REASON = "r" * datapath._MAX_REASON_BYTES


def worst_case_gateway_codec() -> Codec:
    """A checking codec (the gateway's) for the longest mesh name and the highest boot."""
    return Codec(
        "m" * datapath.MAX_MESH_BYTES,
        KEY,
        strict_cbor.dumps,
        strict_cbor.loads,
        boot=0xFFFFFFFF,
        check_batch=check_batch,
    )


def test_readings_frames_stay_under_the_budget_at_worst_case_sizes() -> None:
    buffer = ReadingBuffer(WORST_ID, 0xFFFFFFFF, 64)
    buffer._next_seq = 0xFFFFFFFF - 64  # the biggest seqs a boot may use
    for _ in range(40):
        buffer.add(datapath._MAX_VALUE, WORST_METRICS)
    readings = buffer.due(0, WORST_ID, 0xFFFFFFFF, 64)
    messages = make_messages(WORST_ID, WORST_ID, 0xFFFFFFFF, readings)
    assert sum(len(m.body) for m in messages) == 40
    codec = Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, boot=0xFFFFFFFF)
    codec.counter = 0xFFFFFFFF - 100
    for msg in messages:
        assert len(codec.encode(msg)) <= READINGS_FRAME_BYTES
    small = [[1, seq, 0, {"t": 1}] for seq in range(100)]
    assert [len(m.body) for m in make_messages("a", "b", 1, small)] == [32, 32, 32, 4]


def test_batch_frames_stay_under_max_frame_bytes_at_worst_case_sizes() -> None:
    assert datapath.BATCH_FRAME_BYTES == MAX_FRAME_BYTES  # the codec's limit, mirrored
    collector = Collector(WORST_ID, "m" * datapath.MAX_MESH_BYTES, 512)
    for node in range(40):
        sender = "%016d" % node
        readings = [
            [0xFFFFFFFF, 0xFFFFFFFF - seq, datapath._MAX_VALUE, dict(WORST_METRICS)]
            for seq in range(8)
        ]
        readings[0][3][DROPPED_METRIC] = datapath._MAX_VALUE  # fills the dropped table too
        collector.add(readings, sender)
    members = [
        ["%016d" % i, -(2**31), 0xFFFF, 0xFFFF, 0xFF, datapath._MAX_VALUE] for i in range(40)
    ]
    elections = [[0xFFFFFFFF, WORST_ID, WORST_REASON]] * 8
    codec = worst_case_gateway_codec()
    codec.counter = 0xFFFFFFFF - 100
    sent = 0
    now = 0
    while collector.held:
        batch = collector.due_batch(now, 0xFFFFFFFF, members, elections)
        elections = []
        if batch is None:
            now += 10_000
            continue
        frame = codec.encode(batch_message(WORST_ID, 0xFFFFFFFF, batch))
        assert len(frame) <= MAX_FRAME_BYTES
        assert batch["readings"], "a batch always carries at least one waiting reading"
        sent += len(batch["readings"])
        collector.on_batch_ack(batch["id"], ACK_OK, now)
    assert sent == 320


# ------------------------------------------------------------------------------- MicroPython


def run_check_on_cpython() -> str:
    completed = subprocess.run(
        [sys.executable, str(MPY_SCRIPTS / "datapath_check.py")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


@pytest.mark.micropython
def test_micropython_runs_the_same_data_path_with_the_same_results() -> None:
    rc, out = run_micropython(MPY_SCRIPTS / "datapath_check.py", path=[REPO_ROOT / "firmware/lib"])
    assert rc == 0, out
    expected = run_check_on_cpython()
    assert "settled: True" in expected and "exactly once: ok" in expected
    assert "memory: bounded" in expected
    assert out == expected


# What a board loads: the data path and what it imports, as mpy-cross bytecode.
BOARD_MODULES = [
    "agent/__init__.py",
    "agent/core/__init__.py",
    "agent/core/_compat.py",
    "agent/core/messages.py",
    "agent/core/prng.py",
    "agent/core/datapath.py",
]


@pytest.mark.micropython
def test_micropython_data_path_runs_in_a_64k_heap_from_mpy(tmp_path: Path) -> None:
    for source in [*BOARD_MODULES, "tests/mpy/datapath_check.py"]:
        target = tmp_path / Path(source).relative_to(
            "tests/mpy" if source.startswith("tests") else "."
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        rc, messages = compile_mpy(REPO_ROOT / source, target.with_suffix(".mpy"))
        assert rc == 0, messages
    exe = micropython_path()
    assert exe is not None
    completed = subprocess.run(
        [exe, "-X", "heapsize=64K", "-m", "datapath_check", "footprint"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"MICROPYPATH": ".frozen:%s" % tmp_path, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    out = completed.stdout
    assert completed.returncode == 0, out
    assert "footprint: buffer depth=64 collector held=64" in out
    assert "memory: bounded" in out
    for line in out.splitlines():
        if line.startswith("figure:"):
            print(line)  # shown with -s: the bytes a full buffer and collector hold


@pytest.mark.parametrize("max_frame_bytes", [1100, 1400, 2048])
def test_small_batch_frames_stay_under_max_frame_bytes_at_worst_case_sizes(
    max_frame_bytes: int,
) -> None:
    """A board sends one-datagram batches (``max_frame_bytes=1400``): every frame stays under
    it, every batch carries a reading, and elections, dropped totals and members all get
    through (members in turns; at the smallest size, dropped totals of a full table leave no
    room for members)."""
    collector = Collector(
        WORST_ID, "m" * datapath.MAX_MESH_BYTES, 512, max_frame_bytes=max_frame_bytes
    )
    for node in range(30):
        sender = "%016d" % node
        readings: list[list[Any]] = [
            [0xFFFFFFFF, 0xFFFFFFFF - seq, datapath._MAX_VALUE, dict(WORST_METRICS)]
            for seq in range(4)
        ]
        readings[0][3][DROPPED_METRIC] = datapath._MAX_VALUE
        collector.add(readings, sender)
    members = [
        ["%016d" % i, -(2**31), 0xFFFF, 0xFFFF, 0xFF, datapath._MAX_VALUE] for i in range(30)
    ]
    elections = [[0xFFFFFFFF - i, WORST_ID, WORST_REASON] for i in range(4)]
    codec = worst_case_gateway_codec()
    codec.counter = 0xFFFFFFFF - 1000
    sent = 0
    seen_members: set[str] = set()
    seen_elections: list[int] = []
    now = 0
    while collector.held:
        batch = collector.due_batch(now, 0xFFFFFFFF, members, elections)
        elections = []
        if batch is None:
            now += 10_000
            continue
        frame = codec.encode(batch_message(WORST_ID, 0xFFFFFFFF, batch))
        assert len(frame) <= max_frame_bytes
        assert batch["readings"], "a batch always carries at least one waiting reading"
        sent += len(batch["readings"])
        seen_members.update(row[0] for row in batch["members"])
        seen_elections.extend(e[0] for e in batch["elections"])
        collector.on_batch_ack(batch["id"], ACK_OK, now)
    assert sent == 120
    if max_frame_bytes >= 1400:
        assert len(seen_members) == 30  # the window moved on
    assert sorted(seen_elections) == [0xFFFFFFFF - i for i in range(3, -1, -1)]  # none lost


def test_max_frame_bytes_defaults_to_the_codec_limit_and_is_checked() -> None:
    assert Collector("pi-1", MESH, 8).max_frame_bytes == MAX_FRAME_BYTES
    for bad in (0, 1099, MAX_FRAME_BYTES + 1):
        with pytest.raises(ValueError, match="max_frame_bytes"):
            Collector("pi-1", MESH, 8, max_frame_bytes=bad)
    collector = Collector("pi-1", MESH, 64, batch_ms=0, max_frame_bytes=1400)
    for seq in range(1, 65):
        collector.add([[1, seq, 0, {"temp_mc": 21000, "hum_mpct": 40000}]], "n%02d" % (seq % 10))
    codec = Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch)
    batch = collector.due_batch(0, 1)
    assert batch is not None
    assert 0 < len(batch["readings"]) < 64  # split into datagram-sized batches
    assert len(codec.encode(batch_message("pi-1", 1, batch))) <= 1400


@pytest.mark.micropython
def test_a_collector_out_of_heap_loses_nothing_and_still_drains() -> None:
    """A batch that runs out of heap (a real MemoryError on the unix port, at every point of
    making one in turn) leaves every held reading pending or in flight, and a heap that stays
    too tight for a full batch still gets smaller ones out (tests/mpy/datapath_oom.py)."""
    rc, out = run_micropython(
        MPY_SCRIPTS / "datapath_oom.py", path=[REPO_ROOT / "firmware/lib"], heapsize="1M"
    )
    assert rc == 0, out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["failures"] > 0, figures  # the heap did run out
    assert figures["lost"] == 0, figures
    assert figures["acked"] == figures["readings"] and figures["twice"] == 0, figures
    assert figures["tight_batches"] > 0, figures
