"""The node application (agent/core/app.py) as a pure object, the way h11's tests drive a
Connection: frames and times in, frames and events out, no socket and no clock.

A few apps are wired in memory (frames delivered at the next step) with a stand-in gateway
that acks every batch; the firmware's settings are NodeApp's defaults, the Pi agent's are
passed as agent/runtime.py passes them. The same object runs on MicroPython (the firmware
tests run it there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent import strict_cbor
from agent.core import datapath
from agent.core.app import DEST_GATEWAY, DEST_MESH, DEST_NODE, NodeApp, make_config
from agent.core.batchcheck import check_batch
from agent.core.messages import ACK_FENCED, ACK_OK, BATCH_ACK, F_LEADER, HANDOFF, HEARTBEAT, Msg
from agent.core.node import ROLE_CANDIDATE, ROLE_DOWN, ROLE_FOLLOWER, ROLE_LEADER
from agent.core.wire import Codec
from agent.journal import ReadingJournal, RecoveredReadings

MESH = "appmesh"
KEY = b"app-key"
STEP = 10


def new_app(name: str, battery: int = 900, pi: bool = False, **kwargs: Any) -> NodeApp:
    if pi:  # as agent/runtime.py makes it
        kwargs.setdefault("max_frame_bytes", datapath.BATCH_FRAME_BYTES)
        kwargs.setdefault("max_in_flight", datapath.MAX_IN_FLIGHT)
        kwargs.setdefault("check_batch", check_batch)
    app = NodeApp(name, MESH, KEY, 1, strict_cbor.dumps, strict_cbor.loads, **kwargs)
    app.set_power(battery, 900, False)
    return app


class Net:
    """Apps wired in memory; a stand-in gateway acks every batch (status ``ack``)."""

    def __init__(self, apps: list[NodeApp], gateway: bool = True) -> None:
        self.apps = {app.id: app for app in apps}
        self.down: set[str] = set()
        self.now = 0
        self.queue: list[tuple[str, bytes, Any]] = []
        self.codec = Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch)
        self.reply = Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, boot=1)
        self.gateway = gateway
        self.ack = ACK_OK
        self.stored: set[tuple[str, int, int]] = set()
        self.batches: list[dict[str, Any]] = []
        self.events: dict[str, list[tuple[Any, ...]]] = {name: [] for name in self.apps}
        for app in apps:
            app.gateway_known = gateway

    def start(self) -> None:
        for app in self.apps.values():
            app.start(self.now)
            self.collect(app)

    def collect(self, app: NodeApp) -> None:
        for dest, name, _kind, frame in app.out:
            source = ("10.0.0.%d" % (1 + sorted(self.apps).index(app.id)), 47470)
            if dest == DEST_MESH:
                self.queue += [(n, frame, source) for n in sorted(self.apps) if n != app.id]
            elif dest == DEST_NODE:
                self.queue.append((name, frame, source))
            elif dest == DEST_GATEWAY:
                self.queue.append((app.id, self.answer(bytes(frame)), ("10.0.0.99", 47471)))
        del app.out[:]
        self.events[app.id] += app.events
        del app.events[:]

    def answer(self, frame: bytes) -> bytes:
        msg = self.codec.decode(frame, self.now)
        batch = msg.body
        self.batches.append(batch)
        for node, boot, seq, _t, _metrics in batch["readings"]:
            self.stored.add((node, boot, seq))
        ack = Msg(BATCH_ACK, "gw", msg.term, target=msg.sender, body=[batch["id"], self.ack, 9])
        return self.reply.encode(ack)

    def step(self, sample: bool = False) -> None:
        self.now += STEP
        deliveries, self.queue = self.queue, []
        for name, frame, source in deliveries:
            if name not in self.down:
                self.apps[name].frame(frame, source, self.now)
        for name in sorted(self.apps):
            app = self.apps[name]
            if name in self.down:
                del app.out[:]
                continue
            if sample and self.now % 200 == 0:
                app.sample(self.now, 1_700_000_000_000 + self.now, {"t_mc": self.now})
            if self.now >= app.wakeup:
                app.tick(self.now)
            self.collect(app)

    def run(self, ms: int, sample: bool = False) -> None:
        for _ in range(ms // STEP):
            self.step(sample)

    def leaders(self) -> set[str | None]:
        return {a.node.leader for n, a in self.apps.items() if n not in self.down}


def kinds(events: list[tuple[Any, ...]], kind: str) -> list[tuple[Any, ...]]:
    return [e for e in events if e[0] == kind]


def test_apps_elect_deliver_every_reading_once_and_say_so_in_events() -> None:
    net = Net([new_app("a", 500), new_app("b", 900), new_app("c", 700, pi=True)])
    net.start()
    net.run(3000, sample=True)
    assert net.leaders() == {"b"}
    net.run(8000)  # no new samples: everything drains
    for app in net.apps.values():
        assert app.buffer.depth == 0 and app.errors == 0
        assert sum(app.codec.drops.values()) == 0
    assert {node for node, _, _ in net.stored} == {"a", "b", "c"}
    assert len(net.stored) == sum(a.buffer.taken for a in net.apps.values())
    # The core's view changes come out as events: one per change, the last one is the view.
    for name, app in net.apps.items():
        views = [e for e in net.events[name] if e[0] in ("role", "term")]
        assert views[0] == ("role", ROLE_FOLLOWER, 0, None, None, ROLE_DOWN)
        assert views[-1][1:4] == (app.node.role, app.node.term, app.node.leader)
    lead = kinds(net.events["b"], "role")[-1]
    assert lead[1] == ROLE_LEADER and lead[4] == "start"
    # Confirmations are events too, one per ack, adding up to what the buffer freed.
    for name, app in net.apps.items():
        assert sum(e[1] for e in kinds(net.events[name], "confirmed")) == app.buffer.confirmed
    assert kinds(net.events["b"], "batch_ack")
    # The election record goes to the gateway in the leader's first batch.
    assert next(b["elections"] for b in net.batches if b["elections"]) == [[1, "b", "start"]]


def test_batches_go_to_the_gateway_as_the_out_tuple_names_them() -> None:
    net = Net([new_app("a", 900)])
    net.start()
    net.run(2000, sample=True)
    app = net.apps["a"]
    app.sample(net.now, 1, {"t_mc": 1})
    app.tick(net.now + 1000)
    batches = [(name, kind) for dest, name, kind, _ in app.out if dest == DEST_GATEWAY]
    assert batches and all(isinstance(name, int) for name, _ in batches)  # the batch ids
    assert [b["id"] for b in net.batches] == list(range(1, len(net.batches) + 1))


def test_a_leader_holds_its_batches_until_a_gateway_is_known() -> None:
    net = Net([new_app("a", 900), new_app("b", 300)], gateway=False)
    net.start()
    net.run(3000, sample=True)
    assert net.leaders() == {"a"} and net.batches == []
    held = net.apps["a"].collector.held
    assert held > 0  # the members' readings wait in the collector, bounded
    net.apps["a"].gateway_known = True
    net.run(3000)
    assert net.batches and len(net.stored) >= held


def test_a_udp_member_sends_readings_only_to_an_address_it_has_heard() -> None:
    """On UDP (``needs_address``) readings go where the leader's frames came from: a member
    that never heard its leader's frame keeps them (and does not mark them sent)."""
    leader, member = new_app("a", 900), new_app("b", 300)
    leader.start(0)
    hb = next(f for _, _, k, f in leader.out if k == HEARTBEAT)
    member.start(0)
    member.frame(hb, None, 5)  # heard, but not from an address (as MQTT delivers it)
    assert member.node.leader is None or member.node.leader == "a"
    member.node.receive(Msg(HEARTBEAT, "a", 1, 1, 1000, 0, 1000, 1000), 10)  # follows "a"
    member.tick(10)
    del member.out[:]
    member.sample(20, 1, {"t_mc": 1})
    assert [k for d, _, k, _ in member.out if d == DEST_NODE] == []
    assert member.buffer.sent == 0
    member.needs_address = False  # MQTT: readings go to the leader's topic
    member.sample(30, 2, {"t_mc": 2})
    assert [name for d, name, _, _ in member.out if d == DEST_NODE] == ["a"]
    assert member.address("a") is None


def test_the_election_clock_stops_while_the_broker_is_away() -> None:
    """MQTT: with the broker away nobody is heard, so nobody may be suspected; the clock the
    core runs on stops, and goes on when the leader is heard again."""
    net = Net([new_app("a", 900), new_app("b", 300)])
    net.start()
    net.run(2000)
    member = net.apps["b"]
    assert member.node.leader == "a"
    frozen = member.clock_ms(net.now)
    member.connected(net.now, False)
    assert member.clock_paused and kinds(member.events, "clock_paused") == [
        ("clock_paused", True, "broker unreachable")
    ]
    del member.events[:]
    net.down.add("a")  # the leader hears nothing either: it does not answer
    for _ in range(100):  # 1 s of silence, far above suspect_ms
        net.now += STEP
        assert member.wakeup > net.now + 10**9  # no deadline: the shell sleeps on its timers
        member.tick(net.now)
        assert member.out == [] and member.clock_ms(net.now) == frozen
    assert member.node.leader == "a" and member.node.suspicions == 0
    # The broker is back, but not yet the leader: wait for it (its reconnection), not for
    # ever: the grace is the leader's reconnection time plus two heartbeats.
    member.connected(net.now, True, 500)
    assert member.clock_paused and member.wakeup == net.now + 500 + 2 * 250
    net.down.discard("a")
    net.apps["a"].connected(net.now, True, 500)  # (the leader led: it goes on at once)
    assert not net.apps["a"].clock_paused
    net.run(300)
    assert not member.clock_paused and member.node.leader == "a"
    assert kinds(net.events["b"], "clock_paused")[-1] == ("clock_paused", False, "leader heard")
    # The clock went on from where it stopped (when the leader was heard, a delivery after it
    # was back): no suspicion, no election.
    assert member.node.suspicions == 0 and member.node.term == 1
    assert frozen + 250 <= member.clock_ms(net.now) < frozen + 300


def test_after_the_grace_a_leader_that_died_meanwhile_is_replaced() -> None:
    net = Net([new_app("a", 900), new_app("b", 300)])
    net.start()
    net.run(2000)
    member = net.apps["b"]
    member.connected(net.now, False)
    net.down.add("a")  # the leader dies while the broker is away
    net.run(1000)
    member.connected(net.now, True, 500)
    net.run(1000)
    assert kinds(net.events["b"], "clock_paused")[-1] == (
        "clock_paused",
        False,
        "grace period over",
    )
    net.run(2000)
    assert member.node.role == ROLE_LEADER and member.node.term == 2


def test_a_node_that_starts_without_broker_keeps_its_clock_stopped() -> None:
    app = new_app("a", clock_paused=True)
    app.start(1000)
    assert app.clock_paused and app.clock_ms(1000) == 0
    for now in range(1000, 5000, 100):
        app.tick(now)
    assert app.node.role == ROLE_FOLLOWER  # it never timed out into a claim
    app.connected(5000, True, 4000)  # no leader known: on at once
    assert not app.clock_paused and app.clock_ms(5000) == 0
    app.tick(5000 + 10_000)
    assert app.node.role in (ROLE_CANDIDATE, ROLE_LEADER)


def test_bad_frames_and_samples_are_dropped_counted_and_told() -> None:
    app = new_app("z")
    app.start(0)
    own = app.out[0][3]
    for junk in (b"", b"\xff" * 10, bytes(range(64)), b"\x86" * 5000):
        assert app.frame(junk, ("10.0.0.9", 1), 5) is None
    assert app.frame(own, ("10.0.0.9", 1), 6) is None  # our own frame, looped back
    drops = kinds(app.events, "dropped")
    assert [e[1] for e in drops][-1] == "own_id" and len(drops) == 5
    assert all(e[2] == ("10.0.0.9", 1) for e in drops)
    assert sum(app.codec.drops.values()) == 4 and app.errors == 0
    assert app.sample(10, 1, {"t_mc": 1.5}) is None  # floats never cross the wire
    assert app.sample_errors == 1 and kinds(app.events, "error")[-1][1] == "sample"
    assert app.sample(10, 1, {"t_mc": 1}) == 1
    # Both lists are bounded for callers that never empty them.
    for i in range(100):
        app.frame(b"\xff", None, 20 + i)
    assert len(app.events) <= 16


def test_stop_says_goodbye_twice_naming_the_successor() -> None:
    net = Net([new_app("a", 900), new_app("b", 600), new_app("c", 300)])
    net.start()
    net.run(2000)
    leader = net.apps["a"]
    del leader.events[:]
    leader.stop(net.now)
    goodbye = [(name, kind, bytes(frame)) for dest, name, kind, frame in leader.out]
    assert [(name, kind) for name, kind, _ in goodbye] == [("b", HANDOFF), ("b", HANDOFF)]
    assert goodbye[0][2] != goodbye[1][2]  # two frames: a copy would be a replay
    assert leader.events[-1][:2] == ("role", ROLE_DOWN)
    net.collect(leader)
    net.down.add("a")
    net.run(500)
    assert net.apps["b"].node.role == ROLE_LEADER
    assert kinds(net.events["b"], "role")[-1][4] == "shutdown"
    assert sum(net.apps["c"].codec.drops.values()) == 0  # the second copy was no replay


def test_a_fenced_batch_is_told_and_nothing_more_is_sent_in_that_term() -> None:
    net = Net([new_app("a", 900), new_app("b", 300)])
    net.ack = ACK_FENCED
    net.start()
    net.run(3000, sample=True)
    fenced = kinds(net.events["a"], "batch_ack")
    assert fenced and fenced[0][2] == ACK_FENCED and fenced[0][3] == 9
    sent = len(net.batches)
    net.run(3000, sample=True)
    assert len(net.batches) == sent  # fenced: the collector waits for a newer term


def test_readings_of_earlier_boots_travel_as_the_backlog(tmp_path: Path) -> None:
    """The Pi agent's journal recovery (agent/journal.py) as the app's backlog: readings of
    boot 1 go to the leader with this boot's, and are confirmed and removed."""
    old = ReadingJournal(str(tmp_path), 1, 64)
    for seq in range(1, 6):
        old.add(seq, 1_700_000_000_000 + seq, {"t_mc": seq})
    old.close()
    found = ReadingJournal.recover(str(tmp_path), 2, 64)
    backlog = RecoveredReadings(found.items, found.paths)
    member = NodeApp("b", MESH, KEY, 2, strict_cbor.dumps, strict_cbor.loads)
    member.set_power(300, 900, False)
    member.backlog = backlog
    net = Net([new_app("a", 900), member])
    net.start()
    net.run(3000, sample=True)
    net.run(6000)
    old_boot = {(n, b, s) for n, b, s in net.stored if n == "b" and b == 1}
    assert old_boot == {("b", 1, s) for s in range(1, 6)}
    assert backlog.items == {} and backlog.confirmed == 5
    assert not list(tmp_path.glob("journal-1*"))  # all confirmed: the old journal is gone


def test_the_status_layout_is_the_same_on_every_runtime() -> None:
    net = Net([new_app("a", 900), new_app("b", 300, pi=True)])
    net.start()
    net.run(2000, sample=True)
    for app in net.apps.values():
        status = app.status(net.now)
        json.dumps(status)  # written as JSON by both runtimes
        assert set(status) >= {
            "node",
            "mesh",
            "boot",
            "clock_ms",
            "clock_paused",
            "role",
            "term",
            "leader",
            "lead_reason",
            "score",
            "peers",
            "stats",
            "buffer",
            "collector",
            "drops",
            "errors",
        }
        assert [p["id"] for p in status["peers"]] == [n for n in ("a", "b") if n != app.id]
        assert set(status["peers"][0]) == {
            "id",
            "score",
            "battery",
            "link",
            "term",
            "flags",
            "age_ms",
        }
    assert net.apps["a"].status(net.now)["role"] == "leader"
    assert net.apps["a"].status(net.now, detail=False)["peers"] == ["b"]  # a board's: ids


def test_the_status_marks_peers_not_heard_for_longer_than_the_suspect_time_stale() -> None:
    net = Net([new_app("a", 900), new_app("b", 500), new_app("c", 300)])
    net.start()
    net.run(2000)
    member = net.apps["c"]
    assert member.node.leader == "a" and member.status(net.now)["stale_peers"] == []
    net.down.add("a")  # frozen: hears nothing, says nothing
    heard = member.node.peers.by_id["a"].heard
    suspect_ms = member.node.config.suspect_ms
    net.run(heard + suspect_ms - net.now)
    assert member.status(net.now)["stale_peers"] == []  # exactly the suspect time: not yet
    net.step()
    for detail in (True, False):  # a board's status says the same
        assert member.status(net.now, detail)["stale_peers"] == ["a"]
    net.run(8000)
    status = member.status(net.now)
    assert status["stale_peers"] == ["a"] and status["leader"] == "b"
    row = next(p for p in status["peers"] if p["id"] == "a")
    assert row["flags"] & F_LEADER and row["age_ms"] > 8000  # what it last said, long ago
    net.down.discard("a")  # running again
    net.run(1000)
    assert member.status(net.now)["stale_peers"] == []


def test_make_config_maps_the_config_tables_onto_the_core() -> None:
    cfg = make_config(200, {"margin": 100, "quorum": None}, {"battery": 1, "link": 0})
    assert (cfg.heartbeat_ms, cfg.margin, cfg.quorum) == (200, 100, 0)
    assert (cfg.weights.battery, cfg.weights.link, cfg.weights.low_battery) == (1, 0, 200)
    assert make_config(250).suspect_ms == 750
    with pytest.raises(ValueError, match="suspect_intervals"):
        make_config(250, {"suspect_intervals": 1})
    with pytest.raises(ValueError, match="heartbeat"):
        make_config(5)
    with pytest.raises(ValueError, match=r"election\.no_such_key: unknown setting"):
        make_config(250, {"no_such_key": 1})


class FencingNet(Net):
    """A stand-in gateway with a fence: a batch below it is FENCED (with the fence as the
    highest term), any other is stored and moves the fence up."""

    fence = 0

    def answer(self, frame: bytes) -> bytes:
        msg = self.codec.decode(frame, self.now)
        batch = msg.body
        status = ACK_FENCED if msg.term < self.fence else ACK_OK
        if status == ACK_OK:
            self.fence = msg.term
            self.batches.append(batch)
            for node, boot, seq, _t, _metrics in batch["readings"]:
                self.stored.add((node, boot, seq))
        body = [batch["id"], status, self.fence]
        return self.reply.encode(Msg(BATCH_ACK, "gw", msg.term, target=msg.sender, body=body))


def test_after_a_site_restart_the_fenced_leader_leads_above_the_gateway_once() -> None:
    # The gateway holds term 57 from before the power cut; the apps forgot their terms.
    net = FencingNet([new_app("a", 900), new_app("b", 300)])
    net.fence = 57
    net.start()
    net.run(4000, sample=True)
    a, b = net.apps["a"], net.apps["b"]
    assert (a.node.term, a.node.lead_reason, b.node.leader, b.node.term) == (58, "fenced", "a", 58)
    assert net.batches and {b["leader"] for b in net.batches} == {"a"}
    assert kinds(net.events["a"], "max_term")[-1] == ("max_term", 58)  # for the runtime to keep
    assert ("b", 1, 1) in net.stored
    # Another leader (a far side of a partition) moves the fence on: a's batches are refused,
    # and it does not leap over the fence again in this leadership: deposed means deposed.
    net.fence = 60
    net.run(2000, sample=True)
    sent = len(net.batches)
    net.run(3000, sample=True)
    assert len(net.batches) == sent and a.node.term == 58


def test_a_node_given_its_last_term_claims_above_it_and_is_not_fenced() -> None:
    net = FencingNet([new_app("a", 900, term=57), new_app("b", 300, term=40)])
    net.fence = 57
    net.start()
    net.run(4000, sample=True)
    assert net.apps["a"].node.term == 58 and net.apps["a"].node.lead_reason == "start"
    assert not [e for e in net.events["a"] if e[0] == "batch_ack" and e[2] == ACK_FENCED]
    assert any(node == "b" for node, _boot, _seq in net.stored)
