"""The gateway as a real process, fed real frames over real UDP on loopback."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core import wire
from agent.core.messages import ACK_FENCED, ACK_OK
from testkit.gateway import BatchSender, GatewayProcess, make_batch

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def readings(node: str, boot: int, seqs: range) -> list[list[Any]]:
    return [
        [node, boot, s, 1_700_000_000_000 + s, {"temp": 20_000 + s, "hum": 40_000}] for s in seqs
    ]


def stored(db: Path) -> tuple[int, int]:
    """(rows, distinct (mesh, node, boot, seq)) in the gateway's database."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        distinct = conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT mesh, node, boot, seq FROM readings)"
        ).fetchone()[0]
    return rows, distinct


def metrics(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as response:
        return str(response.read().decode())


def get_json(gw: GatewayProcess, path: str) -> Any:
    with urllib.request.urlopen(gw.url + path, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(str(tmp_path / "gw.db"), "--mesh-key", "keyed=" + KEY.hex())
    try:
        yield gw.start()
    finally:
        gw.stop()


def test_same_batch_twice_is_stored_once(gateway: GatewayProcess, tmp_path: Path) -> None:
    sender = BatchSender("m", "pi-1", gateway.udp)
    batch = make_batch(1, "m", "pi-1", readings("pi-1", 1, range(20)))
    # Two frames (new counters) with one batch: a resend after a lost ack.
    assert sender.deliver(5, batch) == [1, ACK_OK, 5]
    assert sender.deliver(5, batch) == [1, ACK_OK, 5]
    assert stored(tmp_path / "gw.db") == (20, 20)
    text = metrics(gateway)
    assert "meshelect_gateway_dedup_hits_total 20.0" in text
    assert 'meshelect_gateway_batches_total{status="ok",transport="udp"} 2.0' in text


def test_lower_term_after_new_leader_is_fenced(gateway: GatewayProcess, tmp_path: Path) -> None:
    old = BatchSender("m", "pi-1", gateway.udp)
    new = BatchSender("m", "pi-2", gateway.udp)
    assert old.deliver(3, make_batch(1, "m", "pi-1", readings("pi-1", 1, range(5))))[1] == ACK_OK
    assert new.deliver(4, make_batch(1, "m", "pi-2", readings("pi-2", 1, range(5))))[1] == ACK_OK
    stale = old.deliver(3, make_batch(2, "m", "pi-1", readings("pi-1", 1, range(5, 10))))
    assert stale == [2, ACK_FENCED, 4]
    assert stored(tmp_path / "gw.db") == (10, 10)
    assert "meshelect_gateway_fenced_batches_total 1.0" in metrics(gateway)
    mesh = get_json(gateway, "/api/meshes/m")
    assert (mesh["leader"], mesh["term"]) == ("pi-2", 4)


def test_forged_batch_is_dropped(gateway: GatewayProcess, tmp_path: Path) -> None:
    honest = BatchSender("keyed", "pi-1", gateway.udp, key=KEY)
    assert honest.deliver(1, make_batch(1, "keyed", "pi-1", readings("pi-1", 1, range(3))))[1] == 0
    forger = BatchSender("keyed", "evil", gateway.udp, key=b"not-the-mesh-key")
    forger.send(99, make_batch(1, "keyed", "evil", readings("evil", 1, range(3))))
    # No key at all on a keyed mesh: the frame lacks its tag.
    keyless = BatchSender("keyed", "evil2", gateway.udp)
    keyless.send(99, make_batch(1, "keyed", "evil2", readings("evil2", 1, range(3))))
    # A flipped bit in an honest frame.
    frame = bytearray(
        honest.frame(1, make_batch(2, "keyed", "pi-1", readings("pi-1", 1, range(3, 6))))
    )
    frame[20] ^= 1
    honest.send_frame(bytes(frame))
    assert forger.receive_ack(0.5) is None and keyless.receive_ack(0.1) is None
    # The honest leader still gets through, and only its readings are stored.
    assert (
        honest.deliver(1, make_batch(3, "keyed", "pi-1", readings("pi-1", 1, range(6, 9))))[1] == 0
    )
    assert stored(tmp_path / "gw.db") == (6, 6)
    text = metrics(gateway)
    drops = [
        line
        for line in text.splitlines()
        if line.startswith("meshelect_gateway_frames_dropped_total")
    ]
    assert (
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in drops
            if "bad_tag" in line or "malformed" in line
        )
        >= 2
    )
    assert get_json(gateway, "/api/meshes/keyed")["term"] == 1  # term 99 never got in


def test_oversized_and_garbage_frames_are_counted_not_fatal(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    sender = BatchSender("m", "pi-1", gateway.udp)
    sender.send_frame(b"\x9f" + b"x" * (wire.MAX_FRAME_BYTES + 10))  # over the limit
    for junk in (b"", b"\x00", b"\xff" * 50, b"\x87\x1a\x19\x12\x34" + b"\x00" * 30):
        sender.send_frame(junk)
    # A batch that would not fit one frame cannot even be encoded by a leader's codec...
    big = make_batch(1, "m", "pi-1", readings("pi-1", 1, range(200)))
    with pytest.raises(wire.WireError):
        sender.frame(1, big)
    # ...and a batch whose wire size is fine but whose content is not is rejected.
    assert sender.deliver(1, make_batch(2, "m", "pi-1", readings("pi-1", 1, range(10))))[1] == 0
    text = metrics(gateway)
    assert 'meshelect_gateway_frames_dropped_total{reason="too_big",transport="udp"} 1.0' in text
    assert get_json(gateway, "/healthz")["status"] == "ok"
    assert stored(tmp_path / "gw.db") == (10, 10)


def test_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the gateway while batches flow; the leader resends what was not acknowledged."""
    db = tmp_path / "gw.db"
    gw = GatewayProcess(str(db)).start()
    sender = BatchSender("m", "pi-1", gw.udp)
    batches = [
        make_batch(i, "m", "pi-1", readings("pi-1", 1, range(10 * i, 10 * i + 10)))
        for i in range(1, 31)
    ]
    try:
        for batch in batches[:10]:
            sender.deliver(2, batch)
        # In flight when the gateway dies: sent, maybe stored, not acknowledged.
        for batch in batches[10:13]:
            sender.send(2, batch)
        gw.kill()
        gw.start()  # same ports, same database
        for batch in batches[10:]:
            assert sender.deliver(2, batch)[1] == ACK_OK
    finally:
        gw.stop()
    assert stored(db) == (300, 300)
    # Fencing state survived the crash too.
    gw.start()
    try:
        stale = BatchSender("m", "pi-0", gw.udp)
        assert stale.deliver(1, make_batch(1, "m", "pi-0", []))[1] == ACK_FENCED
    finally:
        gw.stop()


def test_concurrent_meshes_into_one_database(gateway: GatewayProcess, tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def leader(mesh: str) -> None:
        try:
            sender = BatchSender(mesh, "lead", gateway.udp)
            for i in range(1, 16):
                rows = readings("n1", 1, range(8 * i, 8 * i + 8)) + readings(
                    "n2", 1, range(8 * i, 8 * i + 8)
                )
                assert sender.deliver(1, make_batch(i, mesh, "lead", rows))[1] == ACK_OK
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=leader, args=("mesh-%d" % i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stored(tmp_path / "gw.db") == (6 * 15 * 16, 6 * 15 * 16)
    assert [m["name"] for m in get_json(gateway, "/api/meshes")] == [
        "mesh-%d" % i for i in range(6)
    ]


def test_closed_gateway_refuses_meshes_without_key(tmp_path: Path) -> None:
    with GatewayProcess(
        str(tmp_path / "gw.db"), "--closed", "--mesh-key", "keyed=" + KEY.hex()
    ) as gw:
        open_sender = BatchSender("open", "pi-1", gw.udp)
        open_sender.send(1, make_batch(1, "open", "pi-1", readings("pi-1", 1, range(3))))
        assert open_sender.receive_ack(0.5) is None
        keyed = BatchSender("keyed", "pi-1", gw.udp, key=KEY)
        assert keyed.deliver(1, make_batch(1, "keyed", "pi-1", []))[1] == ACK_OK
        assert 'reason="unknown_mesh"' in metrics(gw)


def test_two_gateway_processes_share_one_database(tmp_path: Path) -> None:
    """Dedup and fencing hold across processes: they live in the database, not in memory."""
    db = tmp_path / "gw.db"
    with GatewayProcess(str(db)) as first, GatewayProcess(str(db)) as second:
        to_first = BatchSender("m", "pi-1", first.udp)
        to_second = BatchSender("m", "pi-1", second.udp)
        for i in range(1, 6):
            batch = make_batch(i, "m", "pi-1", readings("pi-1", 1, range(10 * i, 10 * i + 10)))
            # The same batch through both gateways (as with an MQTT shared subscription
            # redelivering to another instance after a restart).
            assert to_first.deliver(2, batch)[1] == ACK_OK
            assert to_second.deliver(2, batch)[1] == ACK_OK
        new = BatchSender("m", "pi-2", first.udp)
        assert (
            new.deliver(3, make_batch(1, "m", "pi-2", readings("pi-2", 1, range(3))))[1] == ACK_OK
        )
        # The deposed leader tries the other gateway: that one has not seen term 3 itself.
        stale = to_second.deliver(2, make_batch(9, "m", "pi-1", readings("pi-1", 1, range(90, 95))))
        assert stale == [9, ACK_FENCED, 3]
        # The API of either process shows what the other ingested.
        only_first = BatchSender("solo", "pi-9", first.udp)
        assert only_first.deliver(1, make_batch(1, "solo", "pi-9", []))[1] == ACK_OK
        solo = get_json(second, "/api/meshes/solo")
        assert (solo["leader"], solo["term"]) == ("pi-9", 1)
        assert len(get_json(second, "/api/meshes/m/readings")) == 53
    assert stored(db) == (53, 53)
