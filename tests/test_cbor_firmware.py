"""firmware/lib/cbor.py against cbor2, on CPython and under the real MicroPython unix port."""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest

from agent import strict_cbor
from agent.core import wire
from agent.core.batchcheck import check_batch
from agent.core.messages import (
    ACK_OK,
    BATCH,
    BATCH_ACK,
    CLAIM,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    READINGS,
    READINGS_ACK,
    Msg,
)
from firmware.lib import cbor as fw
from testkit.mpy import compile_mpy, run_micropython
from tests.paths import MPY_SCRIPTS, REPO_ROOT

FW_LIB = REPO_ROOT / "firmware" / "lib"

VALUES: list[Any] = [
    0,
    1,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    2**64 - 1,
    -1,
    -24,
    -25,
    -256,
    -257,
    -(2**32),
    -(2**32) - 1,
    -(2**64),
    b"",
    b"\x00\xff",
    bytes(range(256)),
    "",
    "pi-1",
    "t\u00e9mp\u20ac\U0001f600",
    "x" * 300,
    [],
    [1, [2, [3, []]]],
    list(range(30)),
    {},
    {"temp": 21500},
    {"a": 1, "b": [True, False, None], 3: b"x", b"k": {"n": -1}},
    False,
    True,
    None,
    1.5,
    -0.0,
    1e300,
    float("inf"),
    float("-inf"),
    [[1, 2, 3, {"t": 1}]] * 100,
]


def norm(v: Any) -> Any:
    """A value comparable across runtimes: NaN equal to NaN, maps independent of order."""
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, dict):
        return sorted((repr(norm(k)), norm(x)) for k, x in v.items())
    return (type(v).__name__, v)


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_same_bytes_as_cbor2_and_round_trip(value: Any) -> None:
    data = cbor2.dumps(value)
    assert fw.dumps(value) == data
    assert norm(fw.loads(data)) == norm(value)
    assert norm(cbor2.loads(fw.dumps(value))) == norm(value)


def test_nan_and_tuples_and_bytearray_encode_as_cbor2() -> None:
    assert fw.dumps(float("nan")) == cbor2.dumps(float("nan")) == b"\xf9\x7e\x00"
    assert fw.dumps((1, 2)) == cbor2.dumps((1, 2))
    assert fw.dumps(bytearray(b"ab")) == cbor2.dumps(bytearray(b"ab"))


def test_every_half_float_decodes_as_cbor2() -> None:
    for h in range(0x10000):
        data = b"\xf9" + struct.pack(">H", h)
        assert norm(fw.loads(data)) == norm(cbor2.loads(data)), hex(h)


def test_single_floats_decode_as_cbor2() -> None:
    rng = random.Random(2)
    for _ in range(5000):
        data = b"\xfa" + rng.randbytes(4)
        assert norm(fw.loads(data)) == norm(cbor2.loads(data))


def test_loads_accepts_buffers() -> None:
    assert fw.loads(bytearray(b"\x82\x01\x02")) == [1, 2]
    assert fw.loads(memoryview(b"\x00\x82\x01\x02")[1:]) == [1, 2]


INVALID = [
    ("empty", b""),
    ("trailing", b"\x01\x02"),
    ("truncated uint", b"\x19\x01"),
    ("truncated bytes", b"\x45abc"),
    ("bytes length past end", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff"),
    ("array count past end", b"\x9a\xff\xff\xff\xff"),
    ("map count past end", b"\xa2\x01\x02\x03"),
    ("indefinite bytes", b"\x5f\x41a\xff"),
    ("indefinite text", b"\x7f\x61a\xff"),
    ("indefinite array", b"\x9f\x01\xff"),
    ("indefinite map", b"\xbf\x01\x02\xff"),
    ("lone break", b"\xff"),
    ("reserved ai 28", b"\x1c"),
    ("reserved ai 30 in array", b"\x81\x3e"),
    ("tag", b"\xc1\x01"),
    ("bignum tag", b"\xc2\x41\x01"),
    ("undefined", b"\xf7"),
    ("simple 16", b"\xf0"),
    ("simple 255", b"\xf8\xff"),
    ("invalid utf-8", b"\x61\xff"),
    ("overlong nul", b"\x62\xc0\x80"),
    ("surrogate", b"\x63\xed\xa0\x80"),
    ("past U+10FFFF", b"\x64\xf4\x90\x80\x80"),
    ("truncated utf-8", b"\x62\xe2\x82"),
    ("array as map key", b"\xa1\x80\x01"),
    ("map as map key", b"\xa1\xa0\x01"),
    ("too deep", b"\x81" * (fw._MAX_DEPTH + 1) + b"\x00"),
]


@pytest.mark.parametrize(("why", "data"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_input_raises_only_cbor_decode_error(why: str, data: bytes) -> None:
    with pytest.raises(fw.CBORDecodeError):
        fw.loads(data)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(fw.CBORDecodeError, ValueError)


def test_depth_bound_is_exact() -> None:
    assert fw.loads(b"\x81" * fw._MAX_DEPTH + b"\x00") is not None
    nested: Any = 0
    for _ in range(fw._MAX_DEPTH):
        nested = [nested]
    assert fw.dumps(nested) == cbor2.dumps(nested)
    with pytest.raises(fw.CBOREncodeError):
        fw.dumps([nested])


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, {1, 2}, object(), 1j, memoryview(b"")])
def test_unencodable_values(value: Any) -> None:
    with pytest.raises(fw.CBOREncodeError):
        fw.dumps(value)


def _cpython_accepts(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fw_accepts(b: bytes) -> bool:
    # The strict checker itself: on CPython, str(raw, "utf-8") already refuses what it
    # refuses, so call it directly to test the path MicroPython relies on.
    try:
        fw._check_utf8(b, len(b))
    except fw.CBORDecodeError:
        return False
    return True


def test_strict_utf8_check_matches_cpython() -> None:
    cases: list[bytes] = [bytes([a]) for a in range(256)]
    cases += [bytes([a, b]) for a in range(0x80, 0x100) for b in range(0x70, 0xC8)]
    cont = [0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0]
    cases += [bytes([a, b, c]) for a in range(0xE0, 0xF0) for b in range(0x70, 0xC8) for c in cont]
    cases += [
        bytes([a, b, c, d])
        for a in range(0xF0, 0xF8)
        for b in range(0x70, 0xC8)
        for c in cont
        for d in (0x7F, 0x80, 0xBF, 0xC0)
    ]
    cases += [b"ok" + c + b"ok" for c in cases[::97]]
    for b in cases:
        assert _fw_accepts(b) == _cpython_accepts(b), b.hex()


# -- MicroPython ---------------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(12 if depth < 4 else 8)
    if r == 0:
        return rng.randrange(-(2**64), 2**64)
    if r == 1:
        return rng.randrange(-300, 70000)
    if r == 2:
        return rng.randbytes(rng.randrange(0, 40))
    if r == 3:
        return "".join(
            chr(rng.choice([0x41, 0xE9, 0x20AC, 0x1F600, 0x7F, 0x800]))
            for _ in range(rng.randrange(0, 30))
        )
    if r == 4:
        return rng.choice([True, False, None])
    if r == 5:
        return rng.choice([1.5, -2.25, 1e-300, float("inf"), 123456.789])
    if r in (6, 7):
        return rng.randrange(24)
    if r in (8, 9):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    keys = [rng.choice(["t", "rh", "a" * 30, 7, -3, b"k"]) for _ in range(rng.randrange(0, 4))]
    return {k: _random_value(rng, depth + 1) for k in keys}


def _mutations(rng: random.Random, seeds: list[bytes], n: int) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(rng.randbytes(rng.randrange(0, 24)))
            continue
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(4)
            j = rng.randrange(len(b) + 1)
            if op == 0 and j < len(b):
                b[j] ^= 1 << rng.randrange(8)
            elif op == 1 and j < len(b):
                b[j] = rng.randrange(256)
            elif op == 2:
                b[j:j] = rng.randbytes(rng.randrange(1, 4))
            else:
                del b[j:]
        out.append(bytes(b))
    return out


def _lines(out: str) -> list[str]:
    # The unix port warns on stderr (merged into ``out``) when a decoded map mixes str and
    # bytes keys of equal hash: MicroPython compares them and says so. Not an error.
    return [x for x in out.splitlines() if x != "Warning: Comparison between bytes and str"]


def _fw_outcome(data: bytes) -> tuple[str, Any]:
    try:
        return ("OK", norm(fw.loads(data)))
    except fw.CBORDecodeError:
        return ("ERR", None)


@pytest.mark.micropython
def test_micropython_decodes_and_reencodes_cbor2_vectors() -> None:
    rng = random.Random(3)
    values = VALUES + [_random_value(rng) for _ in range(400)]
    valid = [cbor2.dumps(v) for v in values]
    # cbor2 also reads half and single floats it never writes: check those decode too.
    valid += [b"\xf9\x3c\x00", b"\xf9\x00\x01", b"\xfa\x3f\xc0\x00\x00", b"\xfa\x7f\x80\x00\x01"]
    invalid = [data for _, data in INVALID]
    fuzz = _mutations(rng, valid, 1500)
    vectors = valid + invalid + fuzz
    stdin = "".join(v.hex() + "\n" for v in vectors)
    rc, out = run_micropython(MPY_SCRIPTS / "wire_vectors.py", path=[FW_LIB], stdin=stdin)
    lines = _lines(out)
    assert rc == 0, out[-2000:]
    assert lines[-1] == f"END {len(vectors)}"
    for i, (vector, line) in enumerate(zip(vectors, lines, strict=False)):
        status, _, hexed = line.partition(" ")
        expected_status, expected_value = _fw_outcome(vector)
        assert status == expected_status, (i, vector.hex(), line)
        if i < len(valid):
            assert status == "OK", (vector.hex(), line)
            again = bytes.fromhex(hexed)
            canonical = cbor2.dumps(cbor2.loads(vector))
            # Maps iterate in hash order on MicroPython: bytes match unless a map has 2+ keys.
            if again != canonical:
                assert _has_multi_key_map(cbor2.loads(vector)), vector.hex()
                assert norm(cbor2.loads(again)) == norm(cbor2.loads(canonical)), vector.hex()
        elif status == "OK":
            assert norm(cbor2.loads(bytes.fromhex(hexed))) == expected_value, vector.hex()
    assert sum(line.startswith("OK ") for line in lines[len(valid) :]) > 0


def _has_multi_key_map(v: Any) -> bool:
    if isinstance(v, list):
        return any(_has_multi_key_map(x) for x in v)
    if isinstance(v, dict):
        return len(v) > 1 or any(_has_multi_key_map(x) for x in v.values())
    return False


SAMPLES = [
    Msg(HEARTBEAT, "esp32-0123456789", term=5, flags=1, score=870, heard=3, battery=900, link=800),
    Msg(CLAIM, "pi-2", term=6, score=-12),
    Msg(HANDOFF, "pi-1", term=5, target="esp32-7", flags=16),
    Msg(LEAVE, "pi-3", term=5),
    Msg(
        READINGS,
        "esp32-7",
        term=5,
        target="pi-1",
        body=[[3, 41, 123456, {"temp": 21500, "rh": 40000}]],
    ),
    Msg(READINGS_ACK, "pi-1", term=5, target="esp32-7", body=[[3, 40, 41]]),
    Msg(
        BATCH,
        "pi-1",
        term=5,
        body={
            "id": 7,
            "mesh": "greenhouse",
            "leader": "pi-1",
            "readings": [["esp32-7", 3, 41, 123456, {"temp": 21500}]],
            "agg": [["esp32-7", "temp", 1, 21500, 21500, 21500]],
            "members": [["esp32-7", 870, 900, 800, 4, 120]],
            "dropped": [],
            "elections": [[5, "pi-1", "crash"]],
        },
    ),
    Msg(BATCH_ACK, "gateway", term=5, target="pi-1", body=["b-7", ACK_OK, 5]),
]


def _as_json_fields(m: Msg) -> list[Any]:
    return [
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
    ]


@pytest.mark.micropython
@pytest.mark.parametrize("key", [b"mesh-key", None], ids=["key", "nokey"])
def test_cpython_frames_decode_on_micropython(key: bytes | None) -> None:
    tx = wire.Codec(
        "greenhouse", key, strict_cbor.dumps, strict_cbor.loads, boot=4, check_batch=check_batch
    )
    frames = [tx.encode(m) for m in SAMPLES]
    # Then a replay, another mesh's frame and a tampered one: dropped there as here.
    frames.append(frames[0])
    frames.append(
        wire.Codec("barn", key, strict_cbor.dumps, strict_cbor.loads).encode(_copy(SAMPLES[0]))
    )
    tampered = bytearray(tx.encode(_copy(SAMPLES[3])))
    if key:
        tampered[-1] ^= 1  # a tag bit
    else:
        tampered.append(0)  # unkeyed: any bit change is a valid frame, but trailing bytes are not
    frames.append(bytes(tampered))
    stdin = "".join(f.hex() + "\n" for f in frames)
    keyhex = key.hex() if key else "-"
    rc, out = run_micropython(
        MPY_SCRIPTS / "wire_codec.py", "decode", "greenhouse", keyhex, path=[FW_LIB], stdin=stdin
    )
    assert rc == 0, out
    lines = _lines(out)
    assert lines[-1] == "END"
    for m, line in zip(SAMPLES, lines, strict=False):
        assert line.startswith("MSG "), line
        got = json.loads(line[4:])
        assert got == [
            m.kind,
            m.sender,
            m.boot,
            m.counter,
            m.term,
            m.flags,
            m.score,
            m.heard,
            m.battery,
            m.link,
            m.target,
            m.body,
        ]
    tail = lines[len(SAMPLES) : len(SAMPLES) + 3]
    assert tail == ["DROP replayed", "DROP other_mesh", "DROP bad_tag" if key else "DROP malformed"]


@pytest.mark.micropython
@pytest.mark.parametrize("key", [b"mesh-key", None], ids=["key", "nokey"])
def test_micropython_frames_decode_on_cpython(key: bytes | None) -> None:
    stdin = "".join(json.dumps(_as_json_fields(m)) + "\n" for m in SAMPLES)
    keyhex = key.hex() if key else "-"
    rc, out = run_micropython(
        MPY_SCRIPTS / "wire_codec.py",
        "encode",
        "greenhouse",
        keyhex,
        "9",
        path=[FW_LIB],
        stdin=stdin,
    )
    assert rc == 0, out
    lines = _lines(out)
    assert lines[-1] == "END"
    rx = wire.Codec(
        "greenhouse", key, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch
    )
    for counter, (m, line) in enumerate(zip(SAMPLES, lines, strict=False), start=1):
        assert line.startswith("FRAME "), line
        frame = bytes.fromhex(line[6:])
        got = rx.decode(frame, counter)
        assert (got.boot, got.counter) == (9, counter)
        assert _as_json_fields(got) == _as_json_fields(m)
        # Byte-identical to CPython's frame, unless a map with 2+ keys (hash order there).
        if not _has_multi_key_map(m.body):
            same = wire.Codec(
                "greenhouse",
                key,
                strict_cbor.dumps,
                strict_cbor.loads,
                boot=9,
                check_batch=check_batch,
            )
            same.counter = counter - 1
            assert frame == same.encode(_copy(m))


def _copy(m: Msg) -> Msg:
    fields = _as_json_fields(m)
    return Msg(fields[0], fields[1], *fields[2:])


@pytest.mark.micropython
def test_micropython_fuzz_raises_only_decoder_errors() -> None:
    rc, out = run_micropython(MPY_SCRIPTS / "wire_fuzz.py", "7", "20000", path=[FW_LIB])
    assert rc == 0, out[-2000:]
    lines = _lines(out)
    assert len(lines) == 1, out[-2000:]
    assert lines[0].startswith("DONE 20000"), out[-2000:]
    print(lines[0])


@pytest.mark.micropython
def test_micropython_benchmark_runs() -> None:
    # Prints figures only (no timed assertion); see the final report for numbers.
    rc, out = run_micropython(MPY_SCRIPTS / "wire_bench.py", "2000", path=[FW_LIB])
    assert rc == 0, out
    assert "heartbeat 44 bytes" in out
    print(out.strip())


@pytest.mark.micropython
def test_codec_with_firmware_cbor_on_micropython_talks_to_cpython() -> None:
    code = (
        "import cbor\n"
        "from agent.core import wire, messages as m\n"
        "c = wire.Codec('greenhouse', b'k', cbor.dumps, cbor.loads)\n"
        "f = c.encode(m.Msg(m.LEAVE, 'esp32-1', term=3))\n"
        "rx = wire.Codec('greenhouse', b'k', cbor.dumps, cbor.loads)\n"
        "print(rx.decode(f, 0).term, f.hex())\n"
    )
    rc, out = run_micropython(code=code, path=[FW_LIB])
    assert rc == 0, out
    term, frame = out.split()
    assert term == "3"
    got = wire.Codec("greenhouse", b"k", strict_cbor.dumps, strict_cbor.loads).decode(
        bytes.fromhex(frame), 0
    )
    assert (got.kind, got.sender, got.term) == (LEAVE, "esp32-1", 3)


@pytest.mark.micropython
def test_compiled_modules_run_in_a_64k_heap(tmp_path: Path) -> None:
    # On a board these modules are .mpy bytecode: compile them as the firmware build would
    # and run the benchmark with the heap an MCU has (not a timing test: it must just run).
    for rel in (
        "agent/__init__.py",
        "agent/core/__init__.py",
        "agent/core/messages.py",
        "agent/core/auth.py",
        "agent/core/wire.py",
        "firmware/lib/cbor.py",
    ):
        out_rel = rel.replace("firmware/lib/", "lib/").replace(".py", ".mpy")
        (tmp_path / out_rel).parent.mkdir(parents=True, exist_ok=True)
        rc, msg = compile_mpy(REPO_ROOT / rel, tmp_path / out_rel)
        assert rc == 0, msg
    # The script's own folder comes first on MicroPython's path: copy it next to the .mpy
    # files so they, not the checkout's sources, are imported.
    shutil.copy(MPY_SCRIPTS / "wire_bench.py", tmp_path / "wire_bench.py")
    rc, out = run_micropython(
        tmp_path / "wire_bench.py",
        "100",
        heapsize="64K",
        path=[tmp_path, tmp_path / "lib"],
        cwd=tmp_path,
    )
    assert rc == 0, out
    print(out.strip())
