"""The firmware's MQTT 3.1.1 client (firmware/lib/mqtt.py) under the real MicroPython unix port,
against a real Mosquitto: connect with a last will, subscribe, QoS 1 both ways, the will on
kill -9; and against a raw TCP peer that sends a truncated packet (dropped and counted)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from testkit.broker import Mosquitto, free_port
from testkit.mpy import micropython_env
from testkit.tools import require_tool
from tests.paths import MPY_SCRIPTS, REPO_ROOT

pytestmark = [pytest.mark.micropython]

FIRMWARE_LIB = REPO_ROOT / "firmware" / "lib"
WAIT_S = 10.0  # bound on every wait; the events come in milliseconds


def start_client(port: int, client_id: str, ca: str = "") -> subprocess.Popen[str]:
    exe = require_tool("micropython", "pip install 'meshelect[micropython]'")
    return subprocess.Popen(
        [exe, str(MPY_SCRIPTS / "fw_mqtt_client.py"), str(port), client_id, *([ca] if ca else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=micropython_env([FIRMWARE_LIB]),
        cwd=REPO_ROOT,
        start_new_session=True,
    )


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """A queue fed with the process's stdout lines by a daemon thread."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return out


def wait_line(lines: queue.Queue[str], prefix: str, seen: list[str]) -> str:
    return wait_line_within(lines, prefix, seen, WAIT_S)


def wait_line_within(lines: queue.Queue[str], prefix: str, seen: list[str], within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError("no line starting %r; output so far:\n%s" % (prefix, "\n".join(seen)))


class Watcher:
    """A paho client recording every message on the topics it subscribes to."""

    def __init__(self, broker: Mosquitto, topics: list[str]) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher")
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, m.payload, bool(m.retain))
        )
        self.client.connect(broker.host, broker.port)
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def wait(self, topic: str, payload: bytes) -> tuple[str, bytes, bool]:
        deadline = time.monotonic() + WAIT_S
        seen = []
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(msg)
            if msg[0] == topic and msg[1] == payload:
                return msg
        raise AssertionError("no %s %r; got %r" % (topic, payload, seen))

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto, ["t/#"])
    try:
        yield w
    finally:
        w.close()


def test_publish_subscribe_and_last_will_on_kill(mosquitto: Mosquitto, watcher: Watcher) -> None:
    proc = start_client(mosquitto.port, "fw-a")
    try:
        lines = lines_of(proc)
        seen: list[str] = []
        wait_line(lines, "ready", seen)
        watcher.wait("t/status/fw-a", b"online")
        # Broker -> firmware (QoS 1) and firmware -> broker (QoS 1, PUBACK awaited).
        watcher.publish("t/in/x", b"hello")
        assert wait_line(lines, "got", seen) == "got t/in/x hello 0"
        assert wait_line(lines, "echoed", seen) == "echoed hello 1"
        watcher.wait("t/out", b"echo:hello")
        # A power cut: the broker publishes the will (retained).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
        watcher.wait("t/status/fw-a", b"offline")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
    # The will was retained: a late subscriber sees "offline".
    late = Watcher(mosquitto, ["t/status/#"])
    try:
        retained = late.wait("t/status/fw-a", b"offline")[2]
        assert retained
    finally:
        late.close()


def test_clean_disconnect_sends_no_will(mosquitto: Mosquitto, watcher: Watcher) -> None:
    proc = start_client(mosquitto.port, "fw-b")
    try:
        lines = lines_of(proc)
        seen: list[str] = []
        wait_line(lines, "ready", seen)
        watcher.wait("t/status/fw-b", b"online")
        watcher.publish("t/in/x", b"quit")
        assert wait_line(lines, "drops", seen) == "drops []"
        proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
    # DISCONNECT discards the will: "online" stays the retained status.
    late = Watcher(mosquitto, ["t/status/#"])
    try:
        assert late.wait("t/status/fw-b", b"online")[2]
        time.sleep(0.2)  # let any (wrong) will arrive; nothing is asserted on timing
        assert all(m[1] != b"offline" for m in list(late.messages.queue))
    finally:
        late.close()


def test_reconnects_after_broker_restart(mosquitto: Mosquitto, watcher: Watcher) -> None:
    proc = start_client(mosquitto.port, "fw-c")
    try:
        lines = lines_of(proc)
        seen: list[str] = []
        wait_line(lines, "ready", seen)
        watcher.close()
        mosquitto.restart()
        w2 = Watcher(mosquitto, ["t/#"])
        try:
            # The client reconnects (backoff from 0.5 s) and subscribes again; until then a
            # message to its clean session is lost, so offer one every 0.3 s (bounded).
            got = None
            for _ in range(int(WAIT_S / 0.3)):
                w2.publish("t/in/x", b"again")
                try:
                    got = wait_line_within(lines, "got", seen, 0.3)
                    break
                except AssertionError:
                    continue
            assert got == "got t/in/x again 0", seen
            w2.wait("t/out", b"echo:again")
        finally:
            w2.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)


def test_truncated_packet_dropped_and_counted() -> None:
    """A peer that sends a PUBLISH whose topic length overruns the packet, then one cut short
    by the connection closing: both dropped and counted, the client keeps going."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(2)
    server.settimeout(WAIT_S)
    port = server.getsockname()[1]
    exe = require_tool("micropython")
    code = (
        "import asyncio, mqtt\n"
        "c = mqtt.MQTTClient('fw-t', '127.0.0.1', %d, keepalive=0, on_message=lambda t,p,r: print('msg', t, p))\n"
        "async def main():\n"
        "    asyncio.create_task(c.run())\n"
        "    for _ in range(200):\n"
        "        await asyncio.sleep(0.02)\n"
        "        if c.connects >= 2 and c.drops.get('truncated', 0) >= 2:\n"
        "            break\n"
        "    print('drops', sorted(c.drops.items()), 'connects', c.connects)\n"
        "asyncio.run(main())\n" % port
    )
    proc = subprocess.Popen(
        [exe, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=micropython_env([FIRMWARE_LIB]),
        start_new_session=True,
    )
    try:
        conn, _ = server.accept()
        conn.recv(1024)  # CONNECT
        conn.sendall(b"\x20\x02\x00\x00")  # CONNACK accepted
        # PUBLISH, remaining length 5, but the topic claims 200 bytes: malformed -> counted.
        conn.sendall(b"\x30\x05\x00\xc8abc")
        # A valid PUBLISH proves the stream is still in sync.
        conn.sendall(b"\x30\x07\x00\x03a/bhi")
        # Then half a packet and the connection drops: truncated.
        conn.sendall(b"\x30\x10\x00\x03a/b")
        time.sleep(0.1)
        conn.close()
        conn2, _ = server.accept()  # the client reconnects (backoff 0.5 s)
        conn2.recv(1024)
        conn2.sendall(b"\x20\x02\x00\x00")
        out, _ = proc.communicate(timeout=WAIT_S)
        conn2.close()
    finally:
        server.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
    assert "msg a/b b'hi'" in out, out
    assert "('truncated', 2)" in out, out
    assert proc.returncode == 0, out


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 (EC P-256)."""
    openssl = require_tool("openssl", "apt-get install openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, capture_output=True, check=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=meshelect-test-ca",
    )
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_tls_connection_verified_against_the_ca(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls_port = free_port()
    broker = mosquitto_factory(
        config="listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n"
        % (tls_port, ca, cert, key)
    )
    watcher = Watcher(broker, ["t/#"])  # on the plain listener: sees what arrives over TLS
    proc = start_client(tls_port, "fw-tls", str(ca))
    try:
        lines = lines_of(proc)
        seen: list[str] = []
        wait_line(lines, "ready", seen)
        watcher.wait("t/status/fw-tls", b"online")
        watcher.publish("t/in/x", b"secret")
        assert wait_line(lines, "echoed", seen) == "echoed secret 1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
        watcher.close()
    # Another CA: the handshake fails, the client never connects (and keeps retrying).
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = make_certificates(other)
    exe = require_tool("micropython")
    code = (
        "import asyncio, mqtt\n"
        "c = mqtt.MQTTClient('fw-x', '127.0.0.1', %d, ssl=mqtt.tls_context(%r),"
        " server_hostname='localhost')\n"
        "async def main():\n"
        "    t = asyncio.create_task(c.run())\n"
        "    for _ in range(100):\n"
        "        await asyncio.sleep(0.05)\n"
        "        if sum(c.drops.values()) >= 1:\n"
        "            break\n"
        "    print('connects', c.connects, 'failures', sum(c.drops.values()))\n"
        "asyncio.run(main())\n" % (tls_port, str(other_ca))
    )
    done = subprocess.run(
        [exe, "-c", code],
        env=micropython_env([FIRMWARE_LIB]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "connects 0 failures 1" in done.stdout, done.stdout
