"""``NodeApp.rebase``: a board sets its clock back now and then, so that its times stay small
ints (a 32-bit board's end at 2**30 ms, 12.4 days of uptime). Nothing the mesh does may change:
two meshes get the same frames, losses, partitions and battery changes, one on plain clocks,
one whose nodes' clocks start far along and are set back whenever they pass twice the step,
each node at its own moments (one of them with its election clock stopped for a while, as
MQTT's broker loss does; one wiped and back, taken again once its peers forgot it). Every frame sent, every event and every stored reading must be the
same, byte for byte.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from agent import strict_cbor
from agent.core.app import DEST_GATEWAY, DEST_MESH, DEST_NODE, NodeApp
from agent.core.batchcheck import check_batch
from agent.core.messages import ACK_OK, BATCH_ACK, Msg
from agent.core.wire import Codec

MESH = "rebase"
KEY = b"rebase-key"
STEP = 50
REBASE_MS = 120_000  # far above every timeout of the core (the longest: 60 s)
RUN_MS = 20 * 60_000
NAMES = ["n1", "n2", "n3", "n4"]
WALL_MS = 1_790_000_000_000


def run_mesh(seed: int, rebase: bool) -> list[Any]:
    rng = random.Random(seed)
    apps = {}

    def new_app(i: int, name: str) -> NodeApp:
        app = NodeApp(name, MESH, KEY, 1, strict_cbor.dumps, strict_cbor.loads, seed=i + 1)
        app.set_power(900 - 100 * i, 800, False)
        app.gateway_known = True
        return app

    for i, name in enumerate(NAMES):
        apps[name] = new_app(i, name)
    # Each node's runtime clock: the mesh's time plus its own start, less what it set back.
    start = {name: (2 * REBASE_MS - 7_000 * i if rebase else 0) for i, name in enumerate(NAMES)}
    back = dict.fromkeys(NAMES, 0)
    gateway = Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch)
    reply = Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, boot=1)
    log: list[Any] = []
    queue: list[tuple[str, bytes]] = []
    stored: set[tuple[str, int, int]] = set()
    cut: set[str] = set()  # a partition: these nodes hear nobody and nobody hears them

    def clock(name: str, t: int) -> int:
        return t + start[name] - back[name]

    def collect(name: str, t: int) -> None:
        app = apps[name]
        for dest, to, kind, frame in app.out:
            log.append((t, name, dest, to, kind, bytes(frame)))
            if name in cut or rng.random() < 0.05:
                continue  # lost
            if dest == DEST_MESH:
                queue.extend((n, bytes(frame)) for n in NAMES if n != name and n not in cut)
            elif dest == DEST_NODE:
                queue.append((to, bytes(frame)))
            elif dest == DEST_GATEWAY:
                msg = gateway.decode(bytes(frame), t)
                batch = msg.body
                for reading in batch["readings"]:
                    stored.add((reading[0], reading[1], reading[2]))
                ack = Msg(
                    BATCH_ACK, "gw", msg.term, target=name, body=[batch["id"], ACK_OK, msg.term]
                )
                queue.append((name, reply.encode(ack)))
        del app.out[:]
        log.extend((t, name, *[repr(x) for x in e]) for e in app.events)
        del app.events[:]

    for name in NAMES:
        apps[name].start(clock(name, 0))
        collect(name, 0)
    for t in range(STEP, RUN_MS, STEP):
        if t == 300_000:
            cut.add("n1")  # the leader cut off for 70 s: the rest elect another, forget it
        if t == 370_000:  # (peers forget a node not heard for 60 s)
            cut.clear()
        if t == 500_000:
            apps["n2"].connected(clock("n2", t), False)  # its election clock stops ...
        if t == 650_000:
            apps["n2"].connected(clock("n2", t), True, 1000)  # ... for 150 s
        if t == 800_000:
            apps["n3"].set_power(950, 1000, True)  # on mains: better by far, takes over
        if t == 900_000:
            apps["n4"].stop(clock("n4", t))  # gone, and back wiped (boot 1 again, its
            collect("n4", t)  # counters from 1): taken once peers forgot it (60 s)
            cut.add("n4")
        if t == 980_000:
            cut.discard("n4")
            apps["n4"] = new_app(3, "n4")
            apps["n4"].start(clock("n4", t))
            collect("n4", t)
        deliver, queue[:] = list(queue), []
        for to, frame in deliver:
            if to in cut:
                continue
            app = apps[to]
            app.frame(frame, ("10.0.0.%d" % NAMES.index(to), 47470), clock(to, t))
            collect(to, t)
        for name in NAMES:
            app = apps[name]
            now = clock(name, t)
            if rebase and now >= 2 * REBASE_MS:
                app.rebase(now, REBASE_MS)
                back[name] += REBASE_MS
                now -= REBASE_MS
            if t % 1000 == 0:
                app.sample(now, WALL_MS + t, {"temp_mc": 20000 + t // 1000 % 50})
                log.append((t, name, sorted(app.node.peers.by_id)))  # whom it still knows
            if now >= app.wakeup:
                app.tick(now)
            collect(name, t)
    assert not rebase or min(back.values()) >= 9 * REBASE_MS
    return log + sorted(stored)


@pytest.mark.parametrize("seed", range(3))
def test_a_mesh_on_rebased_clocks_does_exactly_what_it_did(seed: int) -> None:
    plain = run_mesh(seed, rebase=False)
    rebased = run_mesh(seed, rebase=True)
    frames = [entry for entry in plain if len(entry) == 6]
    assert len(frames) > 10_000  # heartbeats, readings, batches and acks went both ways
    assert any(entry[4] == 10 for entry in frames)  # batches
    assert rebased == plain


def test_a_time_more_than_the_step_ago_stays_long_ago() -> None:
    from agent.core.rebase import rebased

    assert rebased(500_000, 100_000) == 400_000
    assert rebased(50_000, 100_000) == 0
    assert rebased(-1, 100_000) == -1  # "never"
    assert rebased(1 << 62, 100_000) == 1 << 62  # "no deadline"
    assert rebased(None, 100_000) is None


def test_an_election_clock_that_stood_still_stays_where_it_is() -> None:
    # Over MQTT with no broker since boot, the election clock is still at 0 when the runtime's
    # is set back: only the runtime's times move.
    twins = []
    for start in (0, 2 * REBASE_MS + 5):
        app = NodeApp("n1", MESH, KEY, 1, strict_cbor.dumps, strict_cbor.loads, clock_paused=True)
        app.start(start)
        twins.append((app, start))
    rebased_app, start = twins[1]
    rebased_app.rebase(start, REBASE_MS)
    base = start - REBASE_MS
    for app, origin in ((twins[0][0], 0), (rebased_app, base)):
        assert app.clock_ms(origin + 1000) == 0
        app.connected(origin + 1000, True, 500)  # no leader known: the clock goes on at once
        assert app.clock_ms(origin + 1250) == 250
        assert app.wakeup - origin == twins[0][0].wakeup
