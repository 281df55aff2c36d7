"""Faults on purpose (agent/faults.py and the simulated battery's set file): the sender read from
real frames' headers, the drop list followed as its file changes, bad files neither crash nor
silently lift a fault, and a battery set once from a file."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent import strict_cbor
from agent.config import from_dict
from agent.core.batchcheck import check_batch
from agent.core.messages import BATCH, CLAIM, HEARTBEAT, READINGS, Msg
from agent.core.wire import Codec
from agent.faults import RECHECK_S, FaultFilter, peek_sender
from agent.logs import EventLog
from agent.sensors import SensorHub, Simulated


@pytest.mark.parametrize("sender", ["n", "node-3", "sixteen-bytes-id", "grün-ünï"])
@pytest.mark.parametrize("key", [None, b"k" * 16])
def test_the_sender_is_read_from_real_frames(sender: str, key: bytes | None) -> None:
    codec = Codec(
        "demo", key, strict_cbor.dumps, strict_cbor.loads, boot=2**32 - 1, check_batch=check_batch
    )
    frames = [
        codec.encode(Msg(HEARTBEAT, sender, term=7, score=800, battery=900, link=1000)),
        codec.encode(Msg(CLAIM, sender, term=2**32 - 1, score=999)),
        codec.encode(Msg(READINGS, sender, term=1, target="x", body=[[1, 1, 5, {"t": 1}]])),
        codec.encode(Msg(BATCH, sender, term=1, body={"id": 1, "readings": []})),
    ]
    for frame in frames:
        assert peek_sender(bytes(frame)) == sender


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x83", b"\x83\x11", b"\x83\x11\x19", b"\x83\x11\x00\x65ab", b"\xa1\x01\x02",
     b"\x83\x11\x00\x01", b"\x83\x11\x00\x62\xff\xfe", b"\x9f\x11\x00\x61a", b"\x83\x11\x00\x7f"],
)  # fmt: skip
def test_garbage_has_no_sender(data: bytes) -> None:
    assert peek_sender(data) is None


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _frame(codec: Codec, sender: str) -> bytes:
    return bytes(codec.encode(Msg(HEARTBEAT, sender, term=1)))


def test_the_drop_list_follows_its_file(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    out = io.StringIO()
    passed: list[Any] = []
    clock = Clock()
    fault = FaultFilter(
        str(path), lambda data, source: passed.append(source), EventLog("n1", stream=out), clock
    )
    codec = Codec("demo", None, strict_cbor.dumps, strict_cbor.loads)
    fault(_frame(codec, "node-3"), "a")
    assert passed == ["a"]  # no file: no fault

    path.write_text(json.dumps({"drop_from": ["node-3", "node-4"]}))
    clock.t += RECHECK_S
    fault(_frame(codec, "node-3"), "b")
    assert passed == ["a"], "a listed sender is dropped"
    fault(_frame(codec, "node-2"), "c")
    assert passed == ["a", "c"]
    assert fault.dropped == 1
    assert "faults_on drop_from=node-3,node-4" in out.getvalue()

    # Healed: the change is seen after RECHECK_S at the latest.
    path.write_text(json.dumps({"drop_from": []}) + " ")
    fault(_frame(codec, "node-4"), "d")
    assert passed == ["a", "c"], "within RECHECK_S the old list still holds"
    clock.t += RECHECK_S
    fault(_frame(codec, "node-4"), "e")
    assert passed == ["a", "c", "e"]
    assert "faults_off dropped=2" in out.getvalue()

    # A file removed is no fault either.
    path.write_text(json.dumps({"drop_from": ["node-4"]}))
    clock.t += RECHECK_S
    fault(_frame(codec, "node-4"), "f")
    os.remove(path)
    clock.t += RECHECK_S
    fault(_frame(codec, "node-4"), "g")
    assert passed[-1] == "g" and "f" not in passed


@pytest.mark.parametrize(
    "text", ["{not json", '{"drop_from": "node-3"}', '{"drop_from": [3]}', "[]"]
)
def test_a_bad_file_is_logged_and_keeps_the_fault_in_force(tmp_path: Path, text: str) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"drop_from": ["node-3"]}))
    out = io.StringIO()
    clock = Clock()
    passed: list[Any] = []
    fault = FaultFilter(
        str(path), lambda data, source: passed.append(source), EventLog("n1", stream=out), clock
    )
    codec = Codec("demo", None, strict_cbor.dumps, strict_cbor.loads)
    fault(_frame(codec, "node-3"), "a")
    path.write_text(text)
    clock.t += RECHECK_S
    fault(_frame(codec, "node-3"), "b")
    assert passed == []
    assert "faults_file_unreadable" in out.getvalue()
    fault(b"\xff\x00garbage", "c")  # a frame without a readable sender is left to the codec
    assert passed == ["c"]


def test_the_config_wires_the_filter_and_the_battery_file(tmp_path: Path) -> None:
    from agent.transport import make_transport

    cfg = from_dict(
        {
            "faults": {"file": str(tmp_path / "f.json")},
            "sensors": [{"type": "simulated", "battery_set_file": str(tmp_path / "b")}],
        }
    )
    transport = make_transport(cfg, lambda data, source: None, EventLog("n1", stream=io.StringIO()))
    assert isinstance(transport.on_frame, FaultFilter)
    assert not isinstance(
        make_transport(from_dict({}), lambda d, s: None, EventLog("n1")).on_frame, FaultFilter
    )
    hub = SensorHub.from_config(cfg.sensors)
    (tmp_path / "b").write_text("160\n")
    assert hub.power(1000) == (160, False)
    assert not (tmp_path / "b").exists()


def test_the_battery_is_set_once_and_a_bad_number_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "battery-set"
    sim = Simulated(battery_start=900, drain_per_min=60, battery_set_file=str(path))
    assert sim.battery(0) == 900
    path.write_text("160")
    assert sim.battery(1000) == 160
    assert not path.exists()
    assert sim.battery(61000) == 100  # it drains on from there
    path.write_text("lots")
    assert sim.battery(61000) == 100
    assert not path.exists()
    path.write_text("5000")
    assert sim.battery(61000) == 1000  # clamped to per mille
