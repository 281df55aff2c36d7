"""The gateway's one-pass reading check (gateway/batch.py ``read_readings``, the codecs'
``BatchReader`` in gateway/frames.py) against the core's batch schema: the same verdict on
every reading and batch, and the stored text ``json.dumps`` writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.core import batchcheck, wire
from agent.core.batchcheck import _batch_reading, check_batch
from gateway import batch
from gateway.batch import read_readings
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


def test_read_readings_takes_at_most_the_schemas_count() -> None:
    assert read_readings([GOOD] * 256) is not None
    assert read_readings([GOOD] * 257) is None
    assert check_batch({"id": 1, "readings": [GOOD] * 257}) == "readings"
    assert read_readings("readings") is None and read_readings(None) is None


BODIES: list[Any] = [
    {"id": 1, "readings": [GOOD]},
    {"id": 1, "readings": []},
    {"id": 1, "readings": [GOOD, [*GOOD[:4], {"t": True}]]},
    {"readings": [GOOD]},
    {"id": 1},
    {"id": -1, "readings": [GOOD]},
    {"readings": [GOOD], "id": "x" * 33},
    {"id": 1, "readings": [GOOD], "agg": [["n1", "temp", 1, 2, 3]]},
    {"id": 1, "readings": [GOOD], "agg": [["n1", "temp", 1, 2, 3, 4]]},
    {"agg": "x", "readings": [["", 1, 2, 3, {}]], "id": 1},
    {"readings": [["", 1, 2, 3, {}]], "agg": "x", "id": 1},
    {"id": 1, "readings": [GOOD], "extra": 1},
    {"id": 1, "readings": [GOOD], 5: 1},
    {"id": 1, "readings": [GOOD], "mesh": "m", "leader": "a", "members": [], "dropped": []},
    [GOOD],
    None,
]


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_the_codecs_check_gives_the_schemas_verdict(body: Any) -> None:
    reader = BatchReader()
    verdict = reader(body)
    assert verdict == check_batch(body)
    if verdict is None:
        assert reader.readings is not None
        assert [r[:5] for r in reader.readings] == [tuple(r) for r in body["readings"]]
    else:
        assert reader.readings is None


def test_the_bounds_are_the_schemas() -> None:
    for name in ("_MAX_ID_BYTES", "_MAX_NAME_BYTES", "_MAX_ITEMS", "_MAX_METRICS"):
        assert getattr(batch, name) == getattr(wire, name), name
    for name in ("_U32", "_I64_MIN", "_I64_MAX"):
        assert getattr(batch, name) == getattr(batchcheck, name), name
