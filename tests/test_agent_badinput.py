"""Bad input never stops an agent: each case gets a log line and a counter, and it runs on.

A real agent process on loopback (its own multicast port, so it hears nobody else) gets a
garbage datagram, a frame of another mesh, a forged frame, a replayed frame; a second agent
meets a broker that refuses it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import strict_cbor
from agent.core.messages import HEARTBEAT, Msg
from agent.core.wire import Codec
from agent.status import read_status
from testkit.broker import Mosquitto
from testkit.tls import make_test_certificates
from testkit.waiting import poll_until

REPO = Path(__file__).resolve().parent.parent
KEY = "00112233445566778899aabbccddeeff"
WAIT_S = 15.0


_wait = functools.partial(poll_until, timeout=WAIT_S)


def _start_agent(tmp_path: Path, extra: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.toml"
    config.write_text(
        'node_id = "victim"\nmesh = "t-bad"\nstate_dir = "%s"\nlog_format = "json"\n'
        "status_ms = 100\n%s\n[discovery]\nenabled = false\n" % (tmp_path / "state", extra)
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agent.runtime", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "agent.log", "wb"),
        stdin=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _log_events(tmp_path: Path) -> list[dict[str, Any]]:
    events = []
    for line in (tmp_path / "agent.log").read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def test_garbage_other_mesh_forged_and_replayed_frames(tmp_path: Path) -> None:
    proc = _start_agent(
        tmp_path,
        'mesh_key = "%s"\n[udp]\ninterface = "127.0.0.1"\nport = 47591\nunicast_port = 0\n' % KEY,
    )
    state = str(tmp_path / "state")
    try:
        status = _wait(lambda: read_status(state))
        assert status is not None, (tmp_path / "agent.log").read_text()
        host, port = status["transport"]["local"].split(":")
        target = (host, int(port))
        peer = Codec("t-bad", bytes.fromhex(KEY), strict_cbor.dumps, strict_cbor.loads, boot=1)
        other_mesh = Codec(
            "another-mesh", bytes.fromhex(KEY), strict_cbor.dumps, strict_cbor.loads, boot=1
        )
        forger = Codec("t-bad", b"wrong key", strict_cbor.dumps, strict_cbor.loads, boot=1)

        def heartbeat(codec: Codec, sender: str = "peer") -> bytes:
            return codec.encode(
                Msg(HEARTBEAT, sender, term=0, score=100, heard=65535, battery=500, link=900)
            )

        good = heartbeat(peer)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for frame in (
                b"\x00\xffgarbage that is not CBOR",
                os.urandom(5000),  # over the frame limit
                heartbeat(other_mesh),
                heartbeat(forger),
                good,
                good,  # the same frame again: a replay
            ):
                sock.sendto(frame, target)

        def dropped() -> dict[str, int] | None:
            drops = (read_status(state) or {}).get("drops", {})
            wanted = ("malformed", "too_big", "other_mesh", "bad_tag", "replayed")
            return drops if all(drops.get(r, 0) >= 1 for r in wanted) else None

        drops = _wait(dropped)
        assert drops is not None, read_status(state)
        # The one good frame was taken: the peer is known, and the agent still runs.
        assert _wait(
            lambda: any(p["id"] == "peer" for p in (read_status(state) or {}).get("peers", []))
        )
        assert proc.poll() is None
        reasons = {
            e.get("reason") for e in _log_events(tmp_path) if e.get("event") == "frame_dropped"
        }
        assert {"malformed", "too_big", "other_mesh", "bad_tag", "replayed"} <= reasons
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.broker
def test_broker_refusing_the_connection_is_logged_and_counted(tmp_path: Path) -> None:
    broker = Mosquitto(config="allow_anonymous false")
    broker.start()
    proc = _start_agent(
        tmp_path,
        'transport = "mqtt"\n[mqtt]\nbroker = "%s:%d"\nusername = "nobody"\npassword = "wrong"\n'
        "reconnect_min_ms = 200\nreconnect_max_ms = 400\n" % (broker.host, broker.port),
    )
    state = str(tmp_path / "state")
    try:
        refused = _wait(
            lambda: (read_status(state) or {}).get("transport", {}).get("refusals", 0) >= 2
        )
        assert refused, (tmp_path / "agent.log").read_text()
        assert proc.poll() is None
        events = [e for e in _log_events(tmp_path) if e.get("event") == "broker_refused"]
        assert events
        assert events[0]["level"] == "error"
        assert "authorized" in events[0]["reason"].lower() or "bad" in events[0]["reason"].lower()
    finally:
        _stop(proc)
        broker.close()
    assert proc.returncode == 0


@pytest.mark.broker
def test_mqtt_over_tls_with_username_and_password(tmp_path: Path) -> None:
    for tool in ("openssl", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.skip("%s not found" % tool)
    certs = tmp_path / "certs"
    certs.mkdir()
    make_test_certificates(certs)
    passwords = certs / "passwd"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "pi", "s3cret"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    broker = Mosquitto(
        config="cafile %s\ncertfile %s\nkeyfile %s\npassword_file %s\nallow_anonymous false\n"
        % (certs / "ca.crt", certs / "server.crt", certs / "server.key", passwords)
    )
    broker.start()
    proc = _start_agent(
        tmp_path,
        'transport = "mqtt"\n[mqtt]\nbroker = "127.0.0.1:%d"\ntls = true\nca_file = "%s"\n'
        'username = "pi"\npassword = "s3cret"\n' % (broker.port, certs / "ca.crt"),
    )
    state = str(tmp_path / "state")
    try:
        # Alone on its mesh, it connects over TLS, authenticates and elects itself.
        led = _wait(lambda: (read_status(state) or {}).get("role") == "leader")
        assert led, (tmp_path / "agent.log").read_text() + broker.log()
        transport = read_status(state)["transport"]  # type: ignore[index]
        assert transport["connected"]
        assert transport["refusals"] == 0
    finally:
        _stop(proc)
        broker.close()
    assert proc.returncode == 0
