"""The wire codec and HMAC tags: round trips, every drop reason, replay window, frame sizes."""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Any

import cbor2
import pytest

from agent import strict_cbor
from agent.core import auth, batchcheck, datapath, messages, wire
from agent.core.messages import (
    ACK_FENCED,
    ACK_OK,
    ACK_REJECTED,
    BATCH,
    BATCH_ACK,
    CLAIM,
    F_LEADER,
    F_LEAVING,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    PROBE,
    READINGS,
    READINGS_ACK,
    Msg,
)
from firmware.lib import cbor as fw_cbor
from testkit.mpy import run_micropython
from tests.paths import REPO_ROOT

MESH = "greenhouse"
U32 = 0xFFFFFFFF
KEY = b"mesh-key-of-greenhouse"

BATCH_BODY = {
    "id": 7,
    "mesh": MESH,
    "leader": "pi-1",
    "readings": [["pi-2", 3, 41, 1_700_000_000_000, {"temp": 21500, "rh": -3}]],
    "agg": [["pi-2", "temp", 4, 21000, 22000, 21500]],
    "members": [["pi-2", 870, 900, 800, 4, 120]],
    "dropped": [["pi-3", 2]],
    "elections": [[5, "pi-1", "crash"], [4, None, 3]],
}

# One message of every kind, every used field set to a non-default value.
SAMPLES = [
    Msg(HEARTBEAT, "pi-1", term=5, flags=F_LEADER, score=870, heard=3, battery=900, link=800),
    Msg(CLAIM, "pi-2", term=6, score=-12),
    Msg(HANDOFF, "pi-1", term=5, target="esp32-7", flags=F_LEAVING),
    Msg(LEAVE, "pi-3", term=5),
    Msg(READINGS, "pi-2", term=5, target="pi-1", body=[[3, 41, 123456, {"temp": 21500}]]),
    Msg(READINGS_ACK, "pi-1", term=5, target="pi-2", body=[[3, 40, 41], [4, 1, 1]]),
    Msg(BATCH, "pi-1", term=5, body=BATCH_BODY),
    Msg(BATCH_ACK, "gateway", term=5, target="pi-1", body=[7, ACK_FENCED, 6]),
    Msg(PROBE, "pi-2", term=5, target="pi-1"),
]


def codec(
    key: bytes | None = KEY,
    dumps: Any = strict_cbor.dumps,
    loads: Any = strict_cbor.loads,
    check_batch: Any = batchcheck.check_batch,
    **kw: Any,
) -> wire.Codec:
    """A codec as the gateway makes one: it reads batches (the batch schema is given)."""
    return wire.Codec(MESH, key, dumps, loads, check_batch=check_batch, **kw)


def raw_frame(arr: list[Any], key: bytes | None = KEY) -> bytes:
    """A frame built by hand with cbor2 (to send what a buggy or hostile peer would)."""
    data = cbor2.dumps(arr)
    return data + (auth.Key(key).tag(data) if key else b"")


def header(kind: int, sender: str = "pi-9", boot: int = 1, counter: int = 1) -> list[Any]:
    return [wire.VERSION * 16 + kind, wire.mesh_hash(MESH), sender, boot, counter]


def expect_drop(rx: wire.Codec, data: bytes, reason: str, now: int = 0) -> None:
    before = dict(rx.drops)
    with pytest.raises(wire.WireError) as info:
        rx.decode(data, now)
    assert info.value.reason == reason
    before[reason] += 1
    assert rx.drops == before


# -- auth ---------------------------------------------------------------------------------


def test_hmac_matches_cpython_hmac_on_many_inputs() -> None:
    rng = random.Random(1)
    key_lengths = [0, 1, 16, 32, 63, 64, 65, 100, 200]
    for i in range(600):
        key = rng.randbytes(key_lengths[i % len(key_lengths)])
        data = rng.randbytes(rng.randrange(0, 300))
        expected = hmac.new(key, data, hashlib.sha256).digest()
        k = auth.Key(key)
        assert k.digest(data) == expected
        n = 1 + i % 32
        assert k.tag(data, n) == expected[:n]
        assert k.verify(data, expected[:n])
        wrong = bytearray(expected[:n])
        wrong[i % n] ^= 1 << (i % 8)
        assert not k.verify(data, bytes(wrong))


def test_hmac_accepts_str_key_and_buffer_data() -> None:
    data = bytearray(b"frame bytes")
    expected = hmac.new(b"k\xc3\xa9y", bytes(data), hashlib.sha256).digest()[:8]
    assert auth.Key("kéy").tag(data) == expected
    assert auth.Key(b"k\xc3\xa9y").tag(memoryview(data)) == expected


def test_verify_refuses_empty_and_overlong_tags() -> None:
    key = auth.Key(b"k")
    assert not key.verify(b"data", b"")
    assert not key.verify(b"data", key.digest(b"data") + b"\x00")
    with pytest.raises(ValueError, match=r"1\.\.32"):
        key.tag(b"data", 0)


def test_constant_time_equal() -> None:
    assert auth.equal(b"abc", b"abc")
    assert not auth.equal(b"abc", b"abd")
    assert not auth.equal(b"abc", b"ab")
    assert auth.equal(b"", b"")


# -- round trips --------------------------------------------------------------------------


def assert_well_typed(msg: Msg) -> None:
    """Independent of wire.py's checks: the types a consumer of a decoded Msg relies on."""
    for name in ("boot", "counter", "term", "flags", "score", "heard", "battery", "link"):
        assert type(getattr(msg, name)) is int, name
    assert type(msg.sender) is str
    assert 1 <= len(msg.sender.encode()) <= 16
    assert msg.kind in wire._BODY_FIELDS
    if msg.kind in (HANDOFF, PROBE, READINGS, READINGS_ACK, BATCH_ACK):
        assert type(msg.target) is str
        assert 1 <= len(msg.target.encode()) <= 16
    else:
        assert msg.target is None
    if msg.kind == READINGS:
        assert type(msg.body) is list
        for boot, seq, t_ms, metrics in msg.body:
            assert all(type(x) is int for x in (boot, seq, t_ms))
            assert type(metrics) is dict
            assert all(type(k) is str and type(v) is int for k, v in metrics.items())
    elif msg.kind == READINGS_ACK:
        assert type(msg.body) is list
        for r in msg.body:
            assert type(r) is list
            assert len(r) == 3
            assert all(type(x) is int for x in r)
    elif msg.kind == BATCH:
        assert type(msg.body) is dict
        assert "id" in msg.body
        assert type(msg.body["readings"]) is list
    elif msg.kind == BATCH_ACK:
        assert type(msg.body) is list
        assert len(msg.body) == 3
        assert type(msg.body[1]) is int
        assert type(msg.body[2]) is int
    else:
        assert msg.body is None


@pytest.mark.parametrize("key", [KEY, None], ids=["key", "nokey"])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda m: str(m.kind))
def test_round_trip_every_kind(sample: Msg, key: bytes | None) -> None:
    tx = codec(key, boot=3)
    rx = codec(key)
    tx.encode(Msg(LEAVE, sample.sender))  # so the sample carries counter 2
    data = tx.encode(sample)
    assert (sample.boot, sample.counter) == (3, 2)
    got = rx.decode(data, now=10)
    assert got == sample
    assert_well_typed(got)
    assert rx.accepted == 1
    assert set(rx.drops.values()) == {0}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda m: str(m.kind))
def test_firmware_cbor_makes_the_same_frames_as_cbor2(sample: Msg) -> None:
    a = codec(dumps=cbor2.dumps, loads=cbor2.loads)
    b = codec(dumps=fw_cbor.dumps, loads=fw_cbor.loads)
    data = a.encode(sample)
    assert b.encode(sample) == data
    assert b.decode(data, 0) == sample


def test_decode_accepts_bytearray_and_memoryview() -> None:
    tx, rx = codec(), codec()
    assert rx.decode(bytearray(tx.encode(SAMPLES[0])), 0).kind == HEARTBEAT
    assert rx.decode(memoryview(tx.encode(SAMPLES[1])), 0).kind == CLAIM


def test_counter_grows_per_frame_and_boot_is_the_codecs() -> None:
    tx = codec(boot=9)
    msgs = [Msg(LEAVE, "n", term=1) for _ in range(3)]
    for m in msgs:
        tx.encode(m)
    assert [(m.boot, m.counter) for m in msgs] == [(9, 1), (9, 2), (9, 3)]
    assert tx.counter == 3


# -- sizes --------------------------------------------------------------------------------


def test_worst_case_heartbeat_with_16_byte_id_and_tag_fits_64_bytes() -> None:
    tx = codec(boot=U32)
    tx.counter = U32 - 1
    msg = Msg(
        HEARTBEAT,
        "\u00e9" * 8,  # 16 UTF-8 bytes
        term=U32,
        flags=255,
        score=-(2**31),
        heard=65535,
        battery=65535,
        link=65535,
    )
    data = tx.encode(msg)
    assert len(data) <= 64
    # Every mesh hash takes at most 3 bytes; this one does.
    assert wire.mesh_hash(MESH) >= 256
    print(f"worst-case heartbeat: {len(data)} bytes with tag")


def test_typical_heartbeat_sizes() -> None:
    msg = SAMPLES[0]
    with_tag = len(codec(boot=12).encode(msg))
    without = len(codec(None, boot=12).encode(msg))
    assert with_tag == without + 8
    print(f"typical heartbeat (id 'pi-1'): {without} bytes, {with_tag} with tag")


def test_heartbeat_vk_is_one_byte() -> None:
    data = codec(None).encode(SAMPLES[0])
    assert data[1] == wire.VERSION * 16 + HEARTBEAT < 24


def test_mesh_hash_is_first_two_sha256_bytes() -> None:
    d = hashlib.sha256(b"greenhouse").digest()
    assert wire.mesh_hash("greenhouse") == int.from_bytes(d[:2], "big")


# -- drops --------------------------------------------------------------------------------


def test_other_mesh_is_dropped_before_the_tag_is_checked() -> None:
    other = wire.Codec("barn", b"another key", strict_cbor.dumps, strict_cbor.loads)
    expect_drop(codec(), other.encode(SAMPLES[0]), wire.OTHER_MESH)


def test_wrong_key_missing_tag_and_extra_tag() -> None:
    data = codec(key=b"wrong key").encode(SAMPLES[0])
    expect_drop(codec(), data, wire.BAD_TAG)
    untagged = codec(None).encode(SAMPLES[0])
    # Unkeyed frame at a keyed receiver: its last 8 CBOR bytes are taken as the tag.
    expect_drop(codec(), untagged, wire.BAD_TAG)
    # Keyed frame at an unkeyed receiver: the tag is trailing garbage.
    expect_drop(codec(None), codec().encode(SAMPLES[0]), wire.MALFORMED)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda m: str(m.kind))
def test_every_tampered_byte_is_dropped(sample: Msg) -> None:
    data = codec().encode(sample)
    rx = codec()
    for i in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(wire.WireError) as info:
                rx.decode(bytes(bad), 0)
            # The mesh hash sits in the first bytes; any other change breaks the tag.
            assert info.value.reason in (
                wire.BAD_TAG,
                wire.OTHER_MESH,
                wire.MALFORMED,
                wire.BAD_VERSION,
                wire.BAD_FIELD,
            )
    assert rx.accepted == 0
    assert rx.decode(data, 0) == sample


@pytest.mark.parametrize("key", [KEY, None], ids=["key", "nokey"])
def test_every_truncation_is_dropped(key: bytes | None) -> None:
    for sample in SAMPLES:
        data = codec(key).encode(sample)
        rx = codec(key)
        for n in range(len(data)):
            with pytest.raises(wire.WireError):
                rx.decode(data[:n], 0)
        assert rx.accepted == 0
        assert sum(rx.drops.values()) == len(data)


def test_oversized_frame_is_dropped_unread() -> None:
    expect_drop(codec(), b"\x00" * (wire.MAX_FRAME_BYTES + 1), wire.TOO_BIG)


def test_encode_refuses_a_frame_over_the_limit() -> None:
    readings = [[1, i, 1_700_000_000_000, {"temperature": -100000}] for i in range(200)]
    tx = codec()
    with pytest.raises(wire.WireError) as info:
        tx.encode(Msg(READINGS, "pi-2", term=1, target="pi-1", body=readings))
    assert info.value.reason == wire.TOO_BIG
    assert tx.counter == 0  # a refused frame uses no counter


def test_other_version_and_unknown_kind() -> None:
    arr = [*header(HEARTBEAT), 1, 0, 0, 0, 0, 0]
    arr[0] = 2 * 16 + HEARTBEAT
    expect_drop(codec(), raw_frame(arr), wire.BAD_VERSION)
    arr = [*header(6), 1]  # kind 6 is not defined
    expect_drop(codec(), raw_frame(arr), wire.BAD_FIELD)


def test_field_count_must_match_the_kind() -> None:
    expect_drop(codec(), raw_frame([*header(LEAVE), 1, 2]), wire.MALFORMED)
    expect_drop(codec(), raw_frame([*header(CLAIM), 1]), wire.MALFORMED)


def test_trailing_bytes_indefinite_lengths_and_tags_are_malformed() -> None:
    good = cbor2.dumps([*header(LEAVE), 1])
    expect_drop(codec(None), good + b"\x00", wire.MALFORMED)
    # The same array with an indefinite-length sender string.
    indefinite = good.replace(b"\x64pi-9", b"\x7f\x62pi\x62-9\xff")
    assert indefinite != good
    expect_drop(codec(None), indefinite, wire.MALFORMED)
    # A tag (epoch datetime) where the term goes: never a valid field.
    tagged = bytes([0x86]) + cbor2.dumps(header(LEAVE))[1:] + b"\xc1\x01"
    expect_drop(codec(None), tagged, wire.MALFORMED)


BAD_FIELDS = [
    ("bool term", [*header(LEAVE), True]),
    ("float term", [*header(LEAVE), 1.0]),
    ("negative term", [*header(LEAVE), -1]),
    ("term over 32 bits", [*header(LEAVE), 1 << 32]),
    ("empty sender", [*header(LEAVE, sender=""), 1]),
    ("17-byte sender", [*header(LEAVE, sender="x" * 17), 1]),
    ("bytes sender", [*header(LEAVE, sender=b"pi-1"), 1]),  # type: ignore[arg-type]
    ("null sender", [*header(LEAVE, sender=None), 1]),  # type: ignore[arg-type]
    ("negative boot", [*header(LEAVE, boot=-1), 1]),
    ("huge counter", [*header(LEAVE, counter=1 << 40), 1]),
    ("flags over a byte", [*header(HEARTBEAT), 1, 256, 0, 0, 0, 0]),
    ("heard over 16 bits", [*header(HEARTBEAT), 1, 0, 0, 65536, 0, 0]),
    ("score over 32 bits", [*header(HEARTBEAT), 1, 0, 1 << 31, 0, 0, 0]),
    ("text battery", [*header(HEARTBEAT), 1, 0, 0, 0, "9", 0]),
    ("null link", [*header(HEARTBEAT), 1, 0, 0, 0, 0, None]),
    ("claim score list", [*header(CLAIM), 1, [1]]),
    ("handoff without target", [*header(HANDOFF), 1, None, 16]),
    ("probe without target", [*header(PROBE), 1, None]),
    ("readings not a list", [*header(READINGS), 1, "pi-1", {}]),
    ("reading too short", [*header(READINGS), 1, "pi-1", [[1, 2, 3]]]),
    ("float metric", [*header(READINGS), 1, "pi-1", [[1, 2, 3, {"t": 21.5}]]]),
    ("int metric name", [*header(READINGS), 1, "pi-1", [[1, 2, 3, {1: 2}]]]),
    ("too many readings", [*header(READINGS), 1, "pi-1", [[1, 2, 3, {}]] * 257]),
    ("range backwards", [*header(READINGS_ACK), 1, "pi-2", [[1, 5, 4]]]),
    ("range as map", [*header(READINGS_ACK), 1, "pi-2", [{1: 2}]]),
    ("batch not a map", [*header(BATCH), 1, []]),
    ("batch without id", [*header(BATCH), 1, {"readings": []}]),
    ("batch unknown key", [*header(BATCH), 1, {"id": 1, "readings": [], "x": 1}]),
    (
        "batch float mean",
        [*header(BATCH), 1, {"id": 1, "readings": [], "agg": [["a", "t", 1, 2, 3, 2.5]]}],
    ),
    (
        "batch bad member",
        [*header(BATCH), 1, {"id": 1, "readings": [], "members": [["a", 1, 2, 3, 4]]}],
    ),
    ("batch_ack unknown status", [*header(BATCH_ACK), 1, "pi-1", [7, 9, 1]]),
    ("batch_ack status 3", [*header(BATCH_ACK), 1, "pi-1", [7, 3, 1]]),
    ("batch_ack bool status", [*header(BATCH_ACK), 1, "pi-1", [7, True, 1]]),
    ("batch_ack short", [*header(BATCH_ACK), 1, "pi-1", [7, ACK_OK]]),
]


@pytest.mark.parametrize(("why", "arr"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_fields_are_dropped(why: str, arr: list[Any]) -> None:
    expect_drop(codec(), raw_frame(arr), wire.BAD_FIELD)
    expect_drop(codec(None), raw_frame(arr, key=None), wire.BAD_FIELD)


@pytest.mark.parametrize(("why", "arr"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_fields_are_dropped_with_firmware_cbor(why: str, arr: list[Any]) -> None:
    rx = codec(dumps=fw_cbor.dumps, loads=fw_cbor.loads)
    expect_drop(rx, raw_frame(arr), wire.BAD_FIELD)


def test_encode_refuses_bad_fields_and_caps_heard() -> None:
    tx = codec()
    for msg in (
        Msg(HEARTBEAT, "x" * 17),
        Msg(HANDOFF, "pi-1", term=1),  # no target
        Msg(CLAIM, "pi-1", term=-1),
        Msg(READINGS, "pi-1", target="pi-2", body=[[1, 2, 3, {"t": 1.5}]]),
        Msg(99, "pi-1"),
    ):
        with pytest.raises(wire.WireError) as info:
            tx.encode(msg)
        assert info.value.reason == wire.BAD_FIELD
    assert tx.counter == 0
    assert set(tx.drops.values()) == {0}  # encode errors are not receive drops
    msg = Msg(HEARTBEAT, "pi-1", heard=1_000_000)
    assert codec().decode(tx.encode(msg), 0).heard == 65535


def test_non_bytes_input_is_malformed() -> None:
    expect_drop(codec(), "text", wire.MALFORMED)  # type: ignore[arg-type]
    expect_drop(codec(), None, wire.MALFORMED)  # type: ignore[arg-type]


def test_codec_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        codec(key=b"")
    with pytest.raises(ValueError, match="boot"):
        codec(boot=-1)
    with pytest.raises(ValueError, match="max_senders"):
        codec(max_senders=0)
    tx = wire.Codec(
        MESH, "mesh-key-of-greenhouse", strict_cbor.dumps, strict_cbor.loads
    )  # str keys are UTF-8
    assert codec().decode(tx.encode(SAMPLES[3]), 0) == SAMPLES[3]


# -- replay -------------------------------------------------------------------------------


def frames(n: int, boot: int = 1, sender: str = "pi-1") -> list[bytes]:
    tx = codec(boot=boot)
    return [tx.encode(Msg(LEAVE, sender, term=i)) for i in range(n)]


def test_replayed_frame_is_dropped() -> None:
    rx = codec()
    (data,) = frames(1)
    rx.decode(data, 0)
    expect_drop(rx, data, wire.REPLAYED, now=1)


def test_old_boot_is_dropped_and_new_boot_resets_the_window() -> None:
    rx = codec()
    old = frames(3, boot=1)
    new = frames(2, boot=2)
    rx.decode(old[0], 0)
    rx.decode(new[0], 1)
    expect_drop(rx, old[1], wire.REPLAYED, now=2)
    rx.decode(new[1], 3)
    expect_drop(rx, new[1], wire.REPLAYED, now=4)


def test_reordering_inside_the_window_is_accepted_once() -> None:
    data = frames(40)
    rx = codec()
    rx.decode(data[35], 0)  # counter 36
    # Counters 5..35 are inside the 32-frame window (36 - 31 = 5): each accepted once.
    for i in range(34, 3, -1):
        rx.decode(data[i], 1)
        expect_drop(rx, data[i], wire.REPLAYED, now=1)
    # Counter 4 is below the window: refused though never seen.
    expect_drop(rx, data[3], wire.REPLAYED, now=2)
    rx.decode(data[39], 3)  # counter 40: the window slides by 4
    expect_drop(rx, data[7], wire.REPLAYED, now=3)  # counter 8 is now below it
    rx.decode(data[36], 4)  # counter 37 was skipped, still inside
    expect_drop(rx, data[35], wire.REPLAYED, now=5)  # 36 was seen before the slide
    assert rx.accepted == 1 + 31 + 2


def test_big_jump_clears_the_window() -> None:
    data = frames(80)
    rx = codec()
    rx.decode(data[0], 0)
    rx.decode(data[79], 1)  # jump of 79 > window
    expect_drop(rx, data[0], wire.REPLAYED, now=2)
    rx.decode(data[78], 3)


def test_silent_sender_is_forgotten_after_replay_forget_ms() -> None:
    rx = codec()
    new = frames(2, boot=5)
    rx.decode(new[0], 1000)
    wiped = frames(1, boot=0)  # the node lost its boot counter
    expect_drop(rx, wiped[0], wire.REPLAYED, now=1000 + wire.REPLAY_FORGET_MS - 1)
    # Drops do not count as "heard": the quiet time runs from the last accepted frame.
    assert rx.decode(wiped[0], 1000 + wire.REPLAY_FORGET_MS).boot == 0
    expect_drop(rx, wiped[0], wire.REPLAYED, now=1000 + wire.REPLAY_FORGET_MS + 1)


def test_replay_table_is_bounded_and_evicts_least_recently_heard() -> None:
    rx = codec(max_senders=4)
    first = {}
    for i in range(4):
        data = frames(2, sender=f"n{i}")
        first[f"n{i}"] = data
        rx.decode(data[0], now=10 * i)
    rx.decode(first["n0"][1], now=100)  # n0 heard again: n1 is now the oldest
    late = frames(1, sender="n9")
    rx.decode(late[0], now=101)
    assert len(rx._senders) == 4
    assert rx.evicted == 1
    assert sorted(rx._senders) == ["n0", "n2", "n3", "n9"]
    # n1's old frame passes again (the documented cost of a bounded table) ...
    rx.decode(first["n1"][0], now=102)
    # ... while the remembered senders still refuse their replays.
    expect_drop(rx, first["n0"][1], wire.REPLAYED, now=103)


def test_forget_drops_replay_state() -> None:
    rx = codec()
    (data,) = frames(1)
    rx.decode(data, 0)
    rx.forget("pi-1")
    assert rx.decode(data, 1).sender == "pi-1"


def test_drops_are_counted_by_reason() -> None:
    rx = codec()
    assert sorted(rx.drops) == sorted(wire.REASONS)
    expect_drop(rx, b"", wire.MALFORMED)
    expect_drop(rx, b"\xff" * 20, wire.MALFORMED)
    assert rx.drops[wire.MALFORMED] == 2


# -- codecs that do not check batches (the firmware's) -------------------------------------


def test_batchcheck_bounds_agree_with_wire() -> None:
    # batchcheck.py and datapath.py repeat some of wire.py's bounds (underscored consts cannot
    # be imported on MicroPython); on CPython all are module attributes.
    for name in ("_MAX_ID_BYTES", "_MAX_NAME_BYTES", "_U32", "_I64_MIN", "_I64_MAX"):
        assert getattr(batchcheck, name) == getattr(wire, name), name
    for name in ("_I32_MIN", "_I32_MAX", "_U16", "_U8", "_I64_MAX"):
        assert getattr(datapath, name) == getattr(wire, name), name
    assert datapath._MAX_TEXT_BYTES == wire._MAX_NAME_BYTES
    assert datapath._MAX_NAME_BYTES == wire._MAX_ID_BYTES  # node ids in the data path
    assert datapath._MAX_U32 == wire._U32
    assert wire._TAG_BYTES == auth.TAG_BYTES


def test_every_kind_has_a_body_layout() -> None:
    kinds = ["HEARTBEAT", "CLAIM", "HANDOFF", "LEAVE", "PROBE", "READINGS", "READINGS_ACK"]
    kinds += ["BATCH", "BATCH_ACK"]
    assert sorted(wire._BODY_FIELDS) == sorted(getattr(messages, name) for name in kinds)
    assert (ACK_OK, ACK_FENCED, ACK_REJECTED) == (0, 1, 2)  # BATCH_ACK statuses: checked as 0..2


def test_codec_without_batch_checks_drops_batches_unread() -> None:
    rx = codec(check_batch=None)
    data = codec().encode(SAMPLES[6])
    expect_drop(rx, data, wire.NO_BATCHES)
    # Dropped before the tag is checked and before the replay window moves.
    expect_drop(rx, data[:-1] + bytes([data[-1] ^ 1]), wire.NO_BATCHES)
    assert rx.accepted == 0 and rx._senders == {}
    # Every other kind is decoded as usual.
    tx = codec(boot=2)
    for sample in SAMPLES:
        if sample.kind != BATCH:
            assert rx.decode(tx.encode(sample), 1) == sample


def test_codec_without_batch_checks_encodes_batch_bodies_unchecked() -> None:
    tx = codec(check_batch=None)
    unchecked = Msg(BATCH, "pi-1", term=5, body={"id": 1, "readings": [], "x": 1})
    data = tx.encode(unchecked)  # a checking codec refuses this body ...
    with pytest.raises(wire.WireError) as info:
        codec().encode(Msg(BATCH, "pi-1", term=5, body=unchecked.body))
    assert info.value.reason == wire.BAD_FIELD
    expect_drop(codec(), data, wire.BAD_FIELD)  # ... and so does every receiver
    # The header and the term are still checked.
    for bad in (Msg(BATCH, "pi-1", term=-1, body={}), Msg(BATCH, "", body={})):
        with pytest.raises(wire.WireError) as info:
            tx.encode(bad)
        assert info.value.reason == wire.BAD_FIELD
    assert codec().decode(tx.encode(SAMPLES[6]), 0) == SAMPLES[6]


@pytest.mark.micropython
def test_codec_without_batch_checks_never_loads_batchcheck_on_micropython() -> None:
    """The firmware's codec is given no batch check: batchcheck.py is never imported. A codec
    given one reads the same frame."""
    code = (
        "import sys\n"
        "import cbor\n"
        "from agent.core import wire, messages as m\n"
        "c = wire.Codec('greenhouse', b'k', cbor.dumps, cbor.loads)\n"
        "f = c.encode(m.Msg(m.BATCH, 'esp32-1', term=3, body={'id': 1, 'readings': []}))\n"
        "try:\n"
        "    c.decode(f, 0)\n"
        "except wire.WireError as e:\n"
        "    print(e.reason)\n"
        "print('agent.core.batchcheck' in sys.modules)\n"
        "from agent.core.batchcheck import check_batch\n"
        "c2 = wire.Codec('greenhouse', b'k', cbor.dumps, cbor.loads, check_batch=check_batch)\n"
        "print(c2.decode(f, 0).body['id'], 'agent.core.batchcheck' in sys.modules)\n"
    )
    rc, out = run_micropython(code=code, path=[REPO_ROOT / "firmware" / "lib"])
    assert rc == 0, out
    assert out.split() == ["no_batches", "False", "1", "True"]


@pytest.mark.parametrize("seed", range(20))
def test_the_split_replay_window_is_a_32_frame_window(seed: int) -> None:
    # Against the plain model: accepted iff above every counter accepted so far, or at most
    # 31 below the highest and not accepted before.
    rng = random.Random(seed)
    rx = codec()
    seen: set[int] = set()
    counter = 1000
    for _ in range(400):
        counter = max(0, counter + rng.choice((-40, -33, -32, -31, -17, -16, -15, -3, -1, 0)))
        counter += rng.choice((0, 1, 2, 15, 16, 17, 31, 32, 33, 50))
        fresh = (
            not seen or counter > max(seen) or (max(seen) - counter < 32 and counter not in seen)
        )
        assert rx._fresh("n1", 7, counter, 0) == fresh, (seed, counter)
        if fresh:
            seen.add(counter)


@pytest.mark.micropython
def test_the_replay_window_allocates_no_long_int_on_a_32_bit_board() -> None:
    # Small ints end at 2**30 on an ESP32 (and the 32-bit stand-in): a 32-bit window held as
    # one int made a long int on the heap for most frames.
    code = (
        "import gc, cbor\n"
        "from agent.core.wire import Codec\n"
        "rx = Codec('m', b'k', cbor.dumps, cbor.loads)\n"
        "c = 1\n"
        "for c in range(1, 200):\n"
        "    rx._fresh('n1', 1, c, 0)\n"
        "gc.collect()\n"
        "gc.disable()\n"
        "before = gc.mem_alloc()\n"
        "for c in range(200, 2000):\n"
        "    rx._fresh('n1', 1, c + (c % 7) * 3, 0)\n"
        "    rx._fresh('n1', 1, c - 20, 0)\n"
        "print(gc.mem_alloc() - before)\n"
    )
    rc, out = run_micropython(code=code, bits=32, cwd="/")
    assert rc == 0, out
    assert out.split() == ["0"], out
