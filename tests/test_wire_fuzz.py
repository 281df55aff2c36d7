"""Property-based fuzzing: the wire decoder and the firmware CBOR codec never fail but in their
own documented way (h11's invariant: any byte string either decodes or raises the one error)."""

from __future__ import annotations

import math
import os
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import strict_cbor
from agent.core import auth, wire
from agent.core.batchcheck import check_batch
from agent.core.messages import Msg
from firmware.lib import cbor as fw
from tests.test_wire import KEY, MESH, SAMPLES, assert_well_typed

# Byte-level properties are cheap to generate: many examples. Structured values cost
# hypothesis most of its time: fewer. MESHELECT_FUZZ_SCALE=10 for a deeper local run.
_SCALE = int(os.environ.get("MESHELECT_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=400 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ_VALUES = settings(FUZZ, max_examples=80 * _SCALE)


def decode_or_drop(codec: wire.Codec, data: bytes) -> Msg | str:
    """The Msg (checked well-typed), or the drop reason; any other exception fails the test."""
    before = sum(codec.drops.values())
    try:
        msg = codec.decode(data, 0)
    except wire.WireError as e:
        reason = e.reason
    else:
        assert_well_typed(msg)
        return msg
    assert reason in wire.REASONS
    assert sum(codec.drops.values()) == before + 1
    return reason


def codecs() -> list[wire.Codec]:
    return [
        wire.Codec(MESH, KEY, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch),
        wire.Codec(MESH, None, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch),
        wire.Codec(MESH, KEY, fw.dumps, fw.loads, check_batch=check_batch),
        wire.Codec(MESH, None, fw.dumps, fw.loads, check_batch=check_batch),
    ]


def valid_frames() -> list[bytes]:
    out = []
    for key in (KEY, None):
        tx = wire.Codec(MESH, key, strict_cbor.dumps, strict_cbor.loads, boot=2)
        out += [
            tx.encode(
                Msg(
                    m.kind,
                    m.sender,
                    m.term,
                    m.flags,
                    m.score,
                    m.heard,
                    m.battery,
                    m.link,
                    m.target,
                    m.body,
                )
            )
            for m in SAMPLES
        ]
    return out


VALID = valid_frames()


# -- the wire decoder ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    for codec in codecs():
        decode_or_drop(codec, data)


@FUZZ
@given(st.sampled_from(range(1, 12)), st.binary(max_size=200))
def test_valid_header_then_any_bytes(kind: int, tail: bytes) -> None:
    # Past the header peek: these reach the tag check, the CBOR decoder and the field checks.
    head = cbor2.dumps([16 + kind, wire.mesh_hash(MESH)])
    for count in (6, 7, 8, 11):
        data = bytes([0x80 + count]) + head[1:] + tail
        for codec in codecs():
            decode_or_drop(codec, data)
            decode_or_drop(codec, data + auth.Key(KEY).tag(data))


# Values of every CBOR type, near every field's edges, nested a little.
EDGE_INTS = [
    0,
    1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63,
    2**64 - 1,
]
EDGE_INTS += [-x for x in EDGE_INTS if x] + [-(2**64)]
SCALARS = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.text(max_size=20),
    st.sampled_from(
        ["", "pi-1", "x" * 16, "x" * 17, "é" * 8, "é" * 9, "id", "readings", "agg", "members", "t"]
    ),
    st.binary(max_size=20),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=4)),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


@FUZZ_VALUES
@given(
    st.sampled_from(range(1, 12)),
    st.one_of(st.sampled_from(["pi-1", "x" * 16]), VALUES),
    st.one_of(st.sampled_from([0, 1, 2**32 - 1]), VALUES),
    st.one_of(st.sampled_from([1, 2**32 - 1]), VALUES),
    st.lists(VALUES, max_size=7),
)
def test_any_cbor_in_the_fields_gives_well_typed_msg_or_drop(
    kind: int, sender: Any, boot: Any, counter: Any, body: list[Any]
) -> None:
    arr = [16 + kind, wire.mesh_hash(MESH), sender, boot, counter, *body]
    data = cbor2.dumps(arr)
    for codec in codecs():
        decode_or_drop(codec, data)
        decode_or_drop(codec, data + auth.Key(KEY).tag(data))


MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(0, 5000),
    st.integers(0, 255),
)


def mutate(frame: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(frame)
    for op, where, byte in ops:
        i = where % (len(b) + 1)
        if op == "flip" and i < len(b):
            b[i] ^= 1 << (byte % 8)
        elif op == "set" and i < len(b):
            b[i] = byte
        elif op == "insert":
            b.insert(i, byte)
        elif op == "delete" and i < len(b):
            del b[i]
        elif op == "truncate":
            del b[i:]
    return bytes(b)


@FUZZ
@given(st.sampled_from(VALID), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_valid_frames(frame: bytes, ops: list[tuple[str, int, int]]) -> None:
    data = mutate(frame, ops)
    results = [decode_or_drop(codec, data) for codec in codecs()]
    # cbor2 and the firmware decoder agree on what is accepted (the reasons may differ at
    # the edges: e.g. too-deep nesting is "malformed" for one and "bad_field" for the other).
    assert isinstance(results[0], Msg) == isinstance(results[2], Msg)
    assert isinstance(results[1], Msg) == isinstance(results[3], Msg)
    if isinstance(results[1], Msg):
        assert results[1] == results[3]
    if data != frame and isinstance(results[0], Msg):
        # A keyed frame that still passes after a change: only possible if the change
        # was outside the authenticated bytes, i.e. never.
        raise AssertionError("tampered keyed frame accepted: %s" % data.hex())


# -- the firmware CBOR codec --------------------------------------------------------------


def norm(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return sorted((repr(norm(k)), norm(x)) for k, x in v.items())
    return (type(v).__name__, v)


@FUZZ
@given(st.binary(max_size=200))
def test_firmware_cbor_any_bytes_decode_or_raise_its_error(data: bytes) -> None:
    try:
        value = fw.loads(data)
    except fw.CBORDecodeError:
        return
    # Whatever the firmware decoder accepts, cbor2 reads the same way.
    assert norm(cbor2.loads(data)) == norm(value)


@FUZZ_VALUES
@given(VALUES)
def test_firmware_cbor_mutations_of_valid_cbor(value: Any) -> None:
    data = cbor2.dumps(value)
    for i in range(min(len(data), 40)):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        try:
            got = fw.loads(bytes(bad))
        except fw.CBORDecodeError:
            continue
        assert norm(cbor2.loads(bytes(bad))) == norm(got)
    try:
        fw.loads(data[:-1])
    except fw.CBORDecodeError:
        return
    raise AssertionError("a truncated item decoded")


# Only the types the firmware codec writes; map keys that never collide (1 == True == 1.0).
ROUND_TRIP = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**64), max_value=2**64 - 1),
        st.text(),
        st.binary(),
        st.booleans(),
        st.none(),
        st.floats(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=8),
        st.dictionaries(
            st.one_of(st.text(), st.integers(-(2**64), 2**64 - 1), st.binary()),
            children,
            max_size=6,
        ),
    ),
    max_leaves=40,
)


@FUZZ_VALUES
@given(ROUND_TRIP)
def test_firmware_cbor_round_trips_with_cbor2_both_ways(value: Any) -> None:
    data = cbor2.dumps(value)
    assert fw.dumps(value) == data
    assert norm(fw.loads(data)) == norm(value)
    assert norm(cbor2.loads(fw.dumps(value))) == norm(value)


@FUZZ
@given(st.integers())
def test_firmware_cbor_int_range(n: int) -> None:
    if -(2**64) <= n < 2**64:
        assert fw.dumps(n) == cbor2.dumps(n)
        assert fw.loads(fw.dumps(n)) == n
    else:
        try:
            fw.dumps(n)
        except fw.CBOREncodeError:
            return
        raise AssertionError("encoded an int beyond 64 bits")
