"""The frame path under load and faults: a real gateway process, real UDP, both decoding modes
(in the worker thread, the default, and in a decoder process of its own)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.core.messages import ACK_OK
from testkit.gateway import BatchSender, GatewayProcess, make_batch, parse_counters
from testkit.waiting import poll_until
from tests.test_gateway_udp import stored

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
MODES = [pytest.param((), id="worker"), pytest.param(("--decode-process",), id="process")]


def readings(node: str, seqs: range) -> list[list[Any]]:
    return [[node, 1, s, 1_700_000_000_000 + s, {"temp": 20_000 + s, "hum": 40_000}] for s in seqs]


def counters(gw: GatewayProcess) -> dict[str, float]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as response:
        return parse_counters(response.read().decode())


def health(gw: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(gw.url + "/healthz", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def dropped(gw: GatewayProcess, reason: str) -> float:
    return counters(gw).get(
        'meshelect_gateway_frames_dropped_total{reason="%s",transport="udp"}' % reason, 0.0
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) counts as gone.
    with open("/proc/%d/stat" % pid) as fp:
        return fp.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("mode", MODES)
def test_a_burst_of_malformed_frames_is_counted_and_good_batches_flow(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    db = tmp_path / "gw.db"
    with GatewayProcess(str(db), "--mesh-key", "keyed=" + KEY.hex(), *mode) as gw:
        honest = BatchSender("keyed", "pi-1", gw.udp, key=KEY)
        junk = BatchSender("keyed", "junk", gw.udp, key=KEY)
        good = honest.frame(1, make_batch(999, "keyed", "pi-1", readings("pi-1", range(1))))
        bad_tag = bytearray(good)
        bad_tag[-1] ^= 1
        kinds = {
            "malformed": b"\x00" * 40,  # not a frame's CBOR array
            "too_big": b"\x9f" * 5000,  # over wire.MAX_FRAME_BYTES
            "bad_tag": bytes(bad_tag),  # one flipped bit in a keyed frame's tag
        }
        burst = 200  # of each kind

        def flood() -> None:
            for _ in range(burst):
                for frame in kinds.values():
                    junk.send_frame(frame)
                time.sleep(0.001)  # a flood, not a kernel buffer overflow on loopback

        flooder = threading.Thread(target=flood)
        flooder.start()
        acks = [
            honest.deliver(
                1, make_batch(i, "keyed", "pi-1", readings("pi-1", range(10 * i, 10 * i + 10)))
            )
            for i in range(1, 21)
        ]
        flooder.join()
        assert all(ack[1] == ACK_OK for ack in acks)
        assert stored(db) == (200, 200)
        # Every junk frame is counted under its reason, none more, none less.
        assert poll_until(lambda: all(dropped(gw, r) == burst for r in kinds), timeout=10), {
            r: dropped(gw, r) for r in kinds
        }
        assert dropped(gw, "overload") == 0
        assert health(gw)["status"] == "ok"


def test_a_killed_decoder_is_restarted_and_nothing_acked_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    with GatewayProcess(str(db), "--decode-process") as gw:
        first = health(gw)["decoder_pid"]
        assert isinstance(first, int) and alive(first)
        leaders = [BatchSender("m-%d" % i, "lead-%d" % i, gw.udp) for i in range(3)]
        for leader in leaders:
            leader.deliver_timeout = 0.3
        acked: list[tuple[int, int]] = []  # (leader, batch id) acknowledged OK
        errors: list[BaseException] = []

        def lead(index: int) -> None:
            sender = leaders[index]
            try:
                for batch_id in range(1, 41):
                    seqs = range(16 * batch_id, 16 * batch_id + 16)
                    batch = make_batch(batch_id, sender.mesh, sender.leader, readings("n", seqs))
                    ack = sender.deliver(1, batch)
                    assert ack[:2] == [batch_id, ACK_OK]
                    acked.append((index, batch_id))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=lead, args=(i,)) for i in range(len(leaders))]
        for thread in threads:
            thread.start()
        assert poll_until(lambda: len(acked) >= 20, timeout=30)
        os.kill(first, signal.SIGKILL)  # mid-stream: frames are in it
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        # A new decoder took over; the old one is gone.
        state = health(gw)
        assert state["decoder_restarts"] == 1
        assert state["decoder_pid"] not in (None, first) and alive(state["decoder_pid"])
        assert not alive(first)
        assert counters(gw)["meshelect_gateway_decoder_restarts_total"] == 1
        # Every batch acknowledged is stored, each reading once (3 meshes x 40 batches x 16).
        assert len(acked) == 3 * 40
        assert stored(db) == (3 * 40 * 16, 3 * 40 * 16)


def test_the_decoder_ends_with_its_gateway(tmp_path: Path) -> None:
    gw = GatewayProcess(str(tmp_path / "gw.db"), "--decode-process").start()
    decoder = health(gw)["decoder_pid"]
    assert alive(decoder)
    gw.kill()  # SIGKILL: no shutdown code runs; the decoder sees its input end
    assert poll_until(lambda: not alive(decoder), timeout=10)


def test_frames_that_wait_for_a_restarting_decoder_are_decoded_when_it_is_up(
    tmp_path: Path,
) -> None:
    db = tmp_path / "gw.db"
    with GatewayProcess(str(db), "--decode-process") as gw:
        first = health(gw)["decoder_pid"]
        os.kill(first, signal.SIGKILL)
        second = poll_until(lambda: health(gw)["decoder_pid"] not in (None, first), timeout=10)
        assert second
        # The second child dies young: the next one starts only after a pause.
        os.kill(health(gw)["decoder_pid"], signal.SIGKILL)
        assert poll_until(lambda: health(gw)["decoder_pid"] is None, timeout=10)
        sender = BatchSender("m", "pi-1", gw.udp)
        sender.send(1, make_batch(1, "m", "pi-1", readings("pi-1", range(5))))  # once, no resend
        ack = sender.receive_ack(10)
        assert ack is not None and ack[:2] == [1, ACK_OK]
        assert health(gw)["decoder_restarts"] == 2
        assert stored(db) == (5, 5)
