"""Frame routing by mesh hash, the live-feed fan-out, and schema migrations (no network)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from agent import strict_cbor
from agent.core import wire
from agent.core.batchcheck import check_batch
from agent.core.messages import BATCH, BATCH_ACK, HEARTBEAT, Msg
from gateway import storage as storage_module
from gateway.events import QUEUE_EVENTS, EventHub
from gateway.frames import FrameDrop, FrameRouter
from gateway.storage import SqliteStorage
from testkit.gateway import make_batch

KEY = b"0123456789abcdef"


def batch_frame(mesh: str, key: bytes | None, term: int = 1, with_name: bool = True) -> bytes:
    body = make_batch(7, mesh, "pi-1", [["pi-1", 1, 1, 5, {"t": 1}]])
    if not with_name:
        del body["mesh"]
    return bytes(
        wire.Codec(mesh, key, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch).encode(
            Msg(BATCH, "pi-1", term=term, body=body)
        )
    )


def test_routes_keyed_and_open_meshes_and_answers_with_an_ack() -> None:
    router = FrameRouter({"keyed": KEY}, open_meshes=True, node_id="gw", boot=3)
    mesh, msg = router.decode(batch_frame("keyed", KEY), 1)
    assert (mesh, msg.sender, msg.body["id"]) == ("keyed", "pi-1", 7)
    mesh, msg = router.decode(batch_frame("open-mesh", None), 2)
    assert mesh == "open-mesh"
    ack = router.encode_ack("keyed", "pi-1", 1, 7, 0, 1)
    leader_side = wire.Codec("keyed", KEY, strict_cbor.dumps, strict_cbor.loads)
    decoded = leader_side.decode(ack, 1)
    assert (decoded.kind, decoded.sender, decoded.target, decoded.body) == (
        BATCH_ACK, "gw", "pi-1", [7, 0, 1],
    )  # fmt: skip
    assert decoded.boot == 3  # the gateway's persisted boot counter: acks survive restarts


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (batch_frame("keyed", None), "bad_tag"),  # a keyed mesh without its tag
        (batch_frame("keyed", b"wrong-key-123456"), "bad_tag"),
        (batch_frame("nameless", None, with_name=False), "unknown_mesh"),
        (b"", "malformed"),
        (b"\x00\x01\x02", "malformed"),
        (b"\x86" + b"\xff" * 10, "malformed"),
        (b"x" * (wire.MAX_FRAME_BYTES + 1), "too_big"),
    ],
)
def test_drops_with_a_reason(frame: bytes, reason: str) -> None:
    router = FrameRouter({"keyed": KEY}, open_meshes=True, node_id="gw", boot=1)
    with pytest.raises(FrameDrop) as caught:
        router.decode(frame, 1)
    assert caught.value.reason == reason


def test_closed_router_and_non_batch_frames() -> None:
    closed = FrameRouter({"keyed": KEY}, open_meshes=False, node_id="gw", boot=1)
    with pytest.raises(FrameDrop, match="unknown_mesh"):
        closed.decode(batch_frame("open-mesh", None), 1)
    heartbeat = wire.Codec("keyed", KEY, strict_cbor.dumps, strict_cbor.loads).encode(
        Msg(HEARTBEAT, "pi-1", term=1)
    )
    with pytest.raises(FrameDrop, match="not_batch"):
        closed.decode(bytes(heartbeat), 1)


def test_replayed_frame_is_dropped() -> None:
    router = FrameRouter({}, open_meshes=True, node_id="gw", boot=1)
    frame = batch_frame("m", None)
    router.decode(frame, 1)
    with pytest.raises(FrameDrop, match="replayed"):
        router.decode(frame, 2)


def test_every_prefix_of_a_frame_is_dropped_cleanly() -> None:
    """Bytes fed one at a time (truncated frames) never raise anything but FrameDrop."""
    router = FrameRouter({"keyed": KEY}, open_meshes=True, node_id="gw", boot=1)
    for frame in (batch_frame("keyed", KEY), batch_frame("open", None)):
        for end in range(len(frame)):
            with pytest.raises(FrameDrop):
                router.decode(frame[:end], 1)


async def test_slow_sse_client_is_cut_off_not_buffered_forever() -> None:
    hub = EventHub()
    fast, slow = hub.subscribe(), hub.subscribe()
    for i in range(QUEUE_EVENTS + 5):
        hub.publish([{"type": "batch", "n": i}])
        if not fast.queue.empty():
            await fast.next(0.1)
    assert hub.cut_off == 1 and len(hub) == 1
    assert slow.closed
    assert await asyncio.wait_for(slow.next(1), 1) == b""  # its stream ends at once


def test_migrations_upgrade_in_place_and_refuse_a_newer_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "gw.db")
    released = len(storage_module.MIGRATIONS)
    first = SqliteStorage(path)
    assert first.schema_version == released and first.next_boot() == 1
    first.close()
    extra = (
        "ALTER TABLE nodes ADD COLUMN note TEXT; CREATE INDEX nodes_by_seen ON nodes (last_seen_ms)"
    )
    monkeypatch.setattr(storage_module, "MIGRATIONS", [*storage_module.MIGRATIONS, extra])
    upgraded = SqliteStorage(path)
    assert upgraded.schema_version == released + 1 and upgraded.next_boot() == 2  # data kept
    upgraded.close()
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(nodes)")]
    assert "note" in columns
    monkeypatch.setattr(storage_module, "MIGRATIONS", storage_module.MIGRATIONS[:1])
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        SqliteStorage(path)
