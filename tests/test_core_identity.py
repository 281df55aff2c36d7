"""Who a node is and whose acknowledgements it takes (the core's half of issue 9, items 2 and 4).

A node's boot id grows across restarts also when its state is lost, as long as its wall clock
is valid (``wire.next_boot``), so peers take its new frames at once and still refuse the old
ones. A member takes a READINGS_ACK only from the leader and term its readings went to, and a
leader takes a BATCH_ACK only when it echoes the id of a batch in flight, which carries random
bits; everything else is counted and ignored. Real codecs (strict CBOR, HMAC), apps wired in
memory (tests/test_core_app.py's ``Net``); the same with real processes is in
tests/test_field_identity.py.
"""

from __future__ import annotations

import pytest

from agent import strict_cbor
from agent.core import datapath, wire
from agent.core.messages import ACK_OK, BATCH_ACK, HEARTBEAT, READINGS_ACK, Msg
from tests.test_core_app import KEY, MESH, Net, new_app

T0 = 1_790_000_000  # a valid wall clock (2026), Unix seconds


def codec(boot: int) -> wire.Codec:
    return wire.Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, boot=boot)


def heartbeat(sender: wire.Codec, name: str) -> bytes:
    return bytes(sender.encode(Msg(HEARTBEAT, name, term=1)))


@pytest.mark.parametrize(
    ("stored", "unix_s", "boot"),
    [
        (0, None, 1),  # no state, no clock: the fallback
        (0, 946_684_800, 1),  # a board's RTC without NTP (2000-01-01): not valid
        (0, 1_767_225_599, 1),  # just before the floor (2026-01-01)
        (0, T0, T0 - 1_704_067_200),  # no state, a valid clock
        (7, T0 + 0.9, T0 - 1_704_067_200),  # the clock is above the stored boot
        (T0, T0, T0 + 1),  # the stored boot is above the clock (restarts within a second)
        (0xFFFFFFFF, T0, 0xFFFFFFFF),  # the wire's bound holds
    ],
)
def test_next_boot_takes_the_higher_of_the_stored_boot_and_the_clock(
    stored: int, unix_s: float | None, boot: int
) -> None:
    assert wire.next_boot(stored, unix_s) == boot


def test_a_node_that_lost_its_state_is_heard_at_once_and_its_old_frames_stay_refused() -> None:
    receiver = codec(1)
    first = codec(wire.next_boot(0, T0))
    captured = [heartbeat(first, "esp-1") for _ in range(5)]
    assert receiver.decode(captured[0], 0).boot == first.boot
    # The board is flashed (no state) and comes back ten seconds later, with NTP time.
    again = codec(wire.next_boot(0, T0 + 10))
    assert again.boot > first.boot
    assert receiver.decode(heartbeat(again, "esp-1"), 10_000).boot == again.boot  # no wait
    for frame in captured:  # the old boot's frames, also those never delivered
        with pytest.raises(wire.WireError) as err:
            receiver.decode(frame, 10_001)
        assert err.value.reason == wire.REPLAYED
    assert receiver.drops[wire.REPLAYED] == 5


def test_without_a_clock_a_wiped_node_reuses_boot_1_and_waits_out_the_forget_time() -> None:
    """The fallback the docs describe: peers take it again after REPLAY_FORGET_MS."""
    receiver = codec(1)
    receiver.decode(heartbeat(codec(wire.next_boot(0, None) + 4), "esp-1"), 0)  # boot 5
    wiped = codec(wire.next_boot(0, None))
    with pytest.raises(wire.WireError):
        receiver.decode(heartbeat(wiped, "esp-1"), 1000)
    assert receiver.decode(heartbeat(wiped, "esp-1"), wire.REPLAY_FORGET_MS).boot == 1


def forger_acks(net: Net, forger: wire.Codec, name: str, ids: list[int]) -> None:
    """A key holder that did not see the traffic: acks every member for everything, and the
    leader for every batch id it can guess."""
    leader = next(iter(net.leaders()))
    term = net.apps[str(leader)].node.term
    source = ("10.0.0.66", 47470)
    for target in sorted(net.apps):
        if target == leader:
            continue
        for boot in (1, 2):
            body = [[boot, 0, 0xFFFFFFFF]]
            ack = Msg(READINGS_ACK, name, term=term, target=target, body=body)
            net.queue.append((target, bytes(forger.encode(ack)), source))
    for batch_id in ids:
        ack = Msg(BATCH_ACK, name, term=term, target=leader, body=[batch_id, ACK_OK, term])
        net.queue.append((str(leader), bytes(forger.encode(ack)), source))


def test_forged_acks_free_and_confirm_nothing_and_are_counted() -> None:
    apps = [new_app("a", 500), new_app("b", 900, pi=True), new_app("c", 700)]
    for app in apps:
        app.collector.token = 12345  # as the runtimes do (a random seed)
    net = Net(apps)
    net.gateway = False
    for app in apps:
        app.gateway_known = False  # batches wait: the forger's acks find readings held
    net.start()
    net.run(3000, sample=True)
    assert net.leaders() == {"b"}
    confirmed = {n: a.buffer.confirmed for n, a in net.apps.items()}
    assert confirmed == {"a": 0, "b": 0, "c": 0}
    for app in apps:
        app.gateway_known = True
    net.run(10)  # the first batch goes out, and waits for its ack
    forger = codec(1)
    guesses = list(range(0, 200)) + [(k << 24) | r for k in (1, 2) for r in range(0, 1 << 24, 4099)]
    held = net.apps["b"].collector.held
    forger_acks(net, forger, "forger", guesses)
    net.queue = [q for q in net.queue if q[2][0] == "10.0.0.66"]  # only the forger speaks
    net.step()
    assert {n: a.buffer.confirmed for n, a in net.apps.items()} == confirmed
    assert net.apps["a"].buffer.foreign_acks == 2 and net.apps["c"].buffer.foreign_acks == 2
    assert net.apps["b"].collector.stale_acks == len(guesses)
    assert net.apps["b"].collector.batches_acked == 0 and net.apps["b"].collector.held == held
    assert net.stored == set()
    # The real gateway's acks still work, and nothing is lost.
    net.run(12_000)
    for app in net.apps.values():
        assert app.buffer.depth == 0 and app.buffer.dropped == 0
    assert len(net.stored) == sum(a.buffer.taken for a in net.apps.values())
    status = net.apps["a"].status(net.now)
    assert status["buffer"]["foreign_acks"] == 2
    assert net.apps["b"].status(net.now)["collector"]["stale_acks"] == len(guesses)


def test_batch_ids_carry_random_bits_when_the_runtime_seeds_them() -> None:
    plain = datapath.Collector("pi-1", MESH, 8)
    seeded = datapath.Collector("pi-1", MESH, 8, token=0xDEADBEEF)
    ids = []
    for now in range(0, 4000, 1000):
        for collector in (plain, seeded):
            collector.add([[1, now + 1, 0, {"t": 1}]], "pi-2")
        assert plain.due_batch(now, 1)["id"] == now // 1000 + 1  # the deterministic default
        batch = seeded.due_batch(now, 1)
        ids.append(batch["id"])
        assert batch["id"] >> 24 == now // 1000 + 1  # the count, then 24 bits
        assert seeded.on_batch_ack(batch["id"] >> 24, ACK_OK, now) == []  # the count alone
        assert seeded.on_batch_ack(batch["id"], ACK_OK, now) == [("pi-2", [[1, now + 1, now + 1]])]
        plain.on_batch_ack(now // 1000 + 1, ACK_OK, now)
    assert len({i & 0xFFFFFF for i in ids}) == 4
    assert seeded.stale_acks == 4
