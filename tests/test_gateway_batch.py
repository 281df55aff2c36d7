"""The gateway's one-pass checks of a batch's lists (gateway/batch.py ``read_readings``,
``read_aggregates``, ``read_members``; the codecs' ``BatchReader`` in gateway/frames.py) against
the core's batch schema: the same verdict on every row and batch, the same records, and the
stored text ``json.dumps`` writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core import batchcheck, datapath, wire
from agent.core.batchcheck import _batch_agg, _batch_reading, check_batch
from agent.core.datapath import _member_row
from gateway import batch
from gateway.batch import Aggregate, Member, read_aggregates, read_members, read_readings
from gateway.frames import BatchReader

GOOD = ["n1", 1, 2, 3, {"temp": 21_000, "hum": 50_000}]

# One field at a time made wrong, or at its bound (which the schema accepts).
VARIANTS: list[tuple[int, Any]] = [
    (0, ""),
    (0, "x" * 16),
    (0, "x" * 17),
    (0, "é" * 8),  # 16 bytes
    (0, "é" * 9),  # 9 characters, 18 bytes
    (0, b"n1"),
    (0, 7),
    (0, None),
    (0, ["n1"]),
    (1, -1),
    (1, 0xFFFFFFFF),
    (1, 0x100000000),
    (1, True),
    (1, 1.0),
    (1, "1"),
    (2, -1),
    (2, 0x100000000),
    (2, False),
    (3, 0x7FFFFFFFFFFFFFFF),
    (3, 0x8000000000000000),
    (3, -1),
    (3, 2.5),
    (4, {}),
    (4, []),
    (4, None),
    (4, {"t": True}),
    (4, {"t": 1.0}),
    (4, {"t": "1"}),
    (4, {"t": None}),
    (4, {"t": -0x8000000000000000, "u": 0x7FFFFFFFFFFFFFFF}),
    (4, {"t": -0x8000000000000001}),
    (4, {"t": 0x8000000000000000}),
    (4, {"": 1}),
    (4, {"m" * 32: 1}),
    (4, {"m" * 33: 1}),
    (4, {b"t": 1}),
    (4, {1: 1}),
    (4, {"a%d" % i: i for i in range(16)}),
    (4, {"a%d" % i: i for i in range(17)}),
    (4, {'q"\\%d': 5, "ü": -3}),
]


def variants() -> list[Any]:
    rows: list[Any] = [GOOD, GOOD[:4], [*GOOD, 0], tuple(GOOD), None, "n1", {}]
    for index, value in VARIANTS:
        row = list(GOOD)
        row[index] = value
        rows.append(row)
    return rows


@pytest.mark.parametrize("row", variants(), ids=repr)
def test_read_readings_accepts_what_the_schema_accepts(row: Any) -> None:
    for _ in range(2):  # the second time from what it remembered
        made = read_readings([GOOD, row])
        assert (made is not None) == bool(_batch_reading(row))
        if made is not None:
            assert [r[:5] for r in made] == [tuple(GOOD), tuple(row)]
            assert made[1].metrics_json == json.dumps(row[4], separators=(",", ":"), sort_keys=True)


AGG = ["n1", "temp", 5, -3, 7, 2]
AGG_VARIANTS: list[tuple[int, Any]] = [
    (0, ""),
    (0, "x" * 17),
    (0, "é" * 9),
    (0, b"n1"),
    (1, "m" * 32),
    (1, "m" * 33),
    (1, ""),
    (1, 3),
    (2, -1),
    (2, 0x7FFFFFFFFFFFFFFF),
    (2, 0x8000000000000000),
    (2, True),
    (3, -0x8000000000000000),
    (3, -0x8000000000000001),
    (3, 1.5),
    (4, 0x8000000000000000),
    (4, None),
    (5, False),
    (5, "2"),
]
MEMBER = ["n1", 800, 900, 700, 1, 50]
MEMBER_VARIANTS: list[tuple[int, Any]] = [
    (0, ""),
    (0, "x" * 16),
    (0, "x" * 17),
    (0, 5),
    (1, -0x80000000),
    (1, -0x80000001),
    (1, 0x80000000),
    (1, True),
    (2, 0xFFFF),
    (2, 0x10000),
    (2, -1),
    (3, 0x10000),
    (3, 1.0),
    (4, 0xFF),
    (4, 0x100),
    (5, 0x7FFFFFFFFFFFFFFF),
    (5, 0x8000000000000000),
    (5, -1),
]


def rows_of(good: list[Any], changes: list[tuple[int, Any]]) -> list[Any]:
    rows: list[Any] = [good, good[:5], [*good, 0], tuple(good), None]
    for index, value in changes:
        row = list(good)
        row[index] = value
        rows.append(row)
    return rows


@pytest.mark.parametrize("row", rows_of(AGG, AGG_VARIANTS), ids=repr)
def test_read_aggregates_accepts_what_the_schema_accepts(row: Any) -> None:
    for _ in range(2):
        made = read_aggregates([AGG, row])
        assert (made is not None) == bool(_batch_agg(row))
        if made is not None:
            assert made == [Aggregate(*AGG), Aggregate(*row)]


# A sleepy member's row carries its wake interval (u32) as a seventh field.
SLEEPY_MEMBER_ROWS: list[Any] = [
    [*MEMBER, 0xFFFFFFFF],
    [*MEMBER, 0x100000000],
    [*MEMBER, -1],
    [*MEMBER, True],
    [*MEMBER, 5, 5],
]


@pytest.mark.parametrize("row", rows_of(MEMBER, MEMBER_VARIANTS) + SLEEPY_MEMBER_ROWS, ids=repr)
def test_read_members_accepts_what_the_schema_accepts(row: Any) -> None:
    for _ in range(2):
        made = read_members([MEMBER, row])
        # A tuple passes the core's check (a runtime's own rows may be tuples) but never comes
        # out of CBOR: the reader leaves it to the schema, which takes it.
        assert (made is not None) == (bool(_member_row(row)) and type(row) is list)
        if made is not None:
            assert made == [Member(*MEMBER), Member(*row)]


@pytest.mark.parametrize("read", [read_readings, read_aggregates, read_members])
def test_the_readers_take_at_most_the_schemas_count(read: Any) -> None:
    good = {read_readings: GOOD, read_aggregates: AGG, read_members: MEMBER}[read]
    assert read([good] * 256) is not None
    assert read([good] * 257) is None
    assert read("rows") is None and read(None) is None and read(()) is None
    assert check_batch({"id": 1, "readings": [GOOD] * 257}) == "readings"


BODIES: list[Any] = [
    {"id": 1, "readings": [GOOD]},
    {"id": 1, "readings": []},
    {"id": 1, "readings": [GOOD, [*GOOD[:4], {"t": True}]]},
    {"readings": [GOOD]},
    {"id": 1},
    {"id": -1, "readings": [GOOD]},
    {"readings": [GOOD], "id": "x" * 33},
    {"id": 1, "readings": [GOOD], "agg": [AGG]},
    {"id": 1, "readings": [GOOD], "agg": [AGG, AGG[:5]]},
    {"id": 1, "readings": [GOOD], "members": [MEMBER], "agg": [AGG]},
    {"id": 1, "readings": [GOOD], "members": [MEMBER, [*MEMBER[:5], -1]]},
    {"id": 1, "readings": [GOOD], "members": [tuple(MEMBER)]},
    {"agg": "x", "readings": [["", 1, 2, 3, {}]], "id": 1},
    {"readings": [["", 1, 2, 3, {}]], "agg": "x", "id": 1},
    {"members": [AGG], "agg": [MEMBER], "readings": [GOOD], "id": 1},
    {"id": 1, "readings": [GOOD], "extra": 1},
    {"id": 1, "readings": [GOOD], 5: 1},
    {"id": 1, "readings": [GOOD], "mesh": "m", "leader": "a", "members": [], "dropped": []},
    {"id": 1, "readings": [GOOD], "elections": [[2, "n1", "crash"]], "dropped": [["n1", 3]]},
    {"id": 1, "readings": [GOOD], "elections": [[2, "n1", ""]]},
    [GOOD],
    None,
]


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_the_codecs_check_gives_the_schemas_verdict(body: Any) -> None:
    reader = BatchReader()
    verdict = reader(body)
    assert verdict == check_batch(body)
    if verdict is None and reader.records is not None:
        records = reader.records
        assert [r[:5] for r in records.readings] == [tuple(r) for r in body["readings"]]
        assert records.aggregates == [Aggregate(*r) for r in body.get("agg", ())]
        assert records.members == [Member(*r) for r in body.get("members", ())]
    else:
        assert reader.records is None
        assert verdict is not None or tuple(MEMBER) in body["members"]  # left to the schema


def test_the_bounds_are_the_schemas() -> None:
    for name in ("_MAX_ID_BYTES", "_MAX_NAME_BYTES", "_MAX_ITEMS", "_MAX_METRICS"):
        assert getattr(batch, name) == getattr(wire, name), name
    for name in ("_U32", "_I64_MIN", "_I64_MAX"):
        assert getattr(batch, name) == getattr(batchcheck, name), name
    for name in ("_I32_MIN", "_I32_MAX", "_U16", "_U8"):
        assert getattr(batch, name) == getattr(datapath, name), name
    assert datapath._MAX_NAME_BYTES == wire._MAX_ID_BYTES  # a member's node id, as a reading's


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),  # at most 32 bytes of UTF-8: a name the schema takes
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        max_size=16,
    )
)
def test_stored_metrics_text_is_what_json_writes(metrics: dict[str, int]) -> None:
    made = read_readings([["n1", 1, 2, 3, metrics]])
    assert made is not None
    assert made[0].metrics_json == json.dumps(metrics, separators=(",", ":"), sort_keys=True)
