"""The real gateway for tests and benches: ``python -m gateway`` as a process, what it stored
(read from its database and ``/metrics``), and leader-side batch senders.

``BatchSender`` speaks the real wire format (``agent.core.wire.Codec``) over a real UDP socket or
a real MQTT broker, the way a leader's collector does: every send is a new frame (new counter),
a batch unacknowledged is sent again, and the ack frames are decoded and checked.
"""

from __future__ import annotations

import atexit
import queue
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

from agent import strict_cbor
from agent.core import topics, wire
from agent.core.batchcheck import check_batch
from agent.core.messages import BATCH, BATCH_ACK, Msg
from testkit.tools import SOURCE_ROOT, python_env

_READY = re.compile(r"meshelect gateway: http://([\d.]+):(\d+)/ udp (?:([\d.]+):(\d+)|off)")


class GatewayProcess:
    """``python -m gateway`` as a child process on free ports (loopback unless ``host``).

    ``wrap`` prefixes the command, e.g. ``["ip", "netns", "exec", "ns1"]`` to run it inside a
    network namespace.
    """

    def __init__(
        self,
        db_path: str,
        *extra: str,
        udp_port: int = 0,
        http_port: int = 0,
        host: str = "127.0.0.1",
        wrap: list[str] | None = None,
        mdns: bool = False,
    ) -> None:
        self.db_path = db_path
        self.host = host
        self.wrap = list(wrap or [])
        self.mdns = mdns
        self.extra = list(extra)
        self.udp_port = udp_port
        self.http_port = http_port
        self.process: subprocess.Popen[str] | None = None
        self.http: tuple[str, int] = ("127.0.0.1", 0)
        self.udp: tuple[str, int] = ("127.0.0.1", 0)
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return "http://%s:%d" % self.http

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        args = [
            *self.wrap, sys.executable, "-m", "gateway",
            "--db", self.db_path,
            "--udp-host", self.host, "--udp-port", str(self.udp_port),
            "--http-host", self.host, "--http-port", str(self.http_port),
            "--mdns" if self.mdns else "--no-mdns", "--log-level", "warning",
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            cwd=SOURCE_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=python_env(PYTHONUNBUFFERED="1"),
        )
        assert self.process.stdout is not None
        # Never outlive the test process, even if it dies before calling stop().
        atexit.register(_kill_quietly, self.process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if not line:
                    break
                self.output.append(line)
                match = _READY.search(line)
                if match:
                    self.http = (match.group(1), int(match.group(2)))
                    if match.group(3):
                        self.udp = (match.group(3), int(match.group(4)))
                    # Keep later ports (a restart) the same: leaders keep their address.
                    self.udp_port, self.http_port = self.udp[1], self.http[1]
                    threading.Thread(target=self._drain, daemon=True).start()
                    return self
            elif self.process.poll() is not None:
                break
        self.kill()
        raise RuntimeError("gateway did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        process = self.process
        if process is None or process.stdout is None:
            return
        for line in process.stdout:
            self.output.append(line)

    def stop(self) -> int | None:
        """SIGTERM and wait (a clean shutdown)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_quietly(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(5)


def accepted_batches(db_path: str, mesh: str) -> list[dict[str, Any]]:
    """The batches the gateway accepted for ``mesh``, oldest first: ``leader``, ``term``,
    ``id`` and ``wall`` (the gateway's clock at ingest, in seconds). Read from its database
    (read-only, beside a running gateway); a database not there yet, or locked, gives []."""
    rows = _query(
        db_path,
        "SELECT leader, term, batch_id, received_ms FROM batches WHERE mesh = ? "
        "ORDER BY received_ms",
        (mesh,),
    )
    return [
        {"leader": leader, "term": term, "id": batch_id, "wall": received_ms / 1000}
        for leader, term, batch_id, received_ms in rows
    ]


def stored_readings(db_path: str, mesh: str) -> dict[tuple[str, int], set[int]]:
    """(node, boot) -> the seqs the gateway stored for ``mesh`` (see ``accepted_batches``)."""
    stored: dict[tuple[str, int], set[int]] = {}
    for node, boot, seq in _query(
        db_path, "SELECT node, boot, seq FROM readings WHERE mesh = ?", (mesh,)
    ):
        stored.setdefault((node, boot), set()).add(seq)
    return stored


def conflicting_readings(db_path: str, mesh: str, node: str) -> int:
    """How many readings of ``node`` the gateway set aside as conflicts: an id it had stored
    with other content (a reading it would have stored twice; see ``accepted_batches``)."""
    rows = _query(
        db_path,
        "SELECT COUNT(*) FROM reading_conflicts WHERE mesh = ? AND node = ?",
        (mesh, node),
    )
    return int(rows[0][0]) if rows else 0


def _query(db_path: str, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    try:
        db = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        return list(db.execute(sql, args))
    except sqlite3.Error:
        return []
    finally:
        db.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([-+0-9.eE]+|[-+]?Inf|NaN)$")


def parse_counters(text: str) -> dict[str, float]:
    """Samples of a Prometheus text page (``/metrics``): ``name`` or ``name{labels}`` -> value."""
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def make_batch(
    batch_id: int,
    mesh: str,
    leader: str,
    readings: list[list[Any]],
    members: list[list[Any]] | None = None,
    elections: list[list[Any]] | None = None,
    dropped: list[list[Any]] | None = None,
) -> dict[str, Any]:
    """A batch map as agent/core/datapath.py's Collector builds it (aggregates included)."""
    acc: dict[tuple[str, str], list[int]] = {}
    for node, _boot, _seq, _t, metrics in readings:
        for name, value in metrics.items():
            row = acc.get((node, name))
            if row is None:
                acc[(node, name)] = [1, value, value, value]
            else:
                row[0] += 1
                row[1] = min(row[1], value)
                row[2] = max(row[2], value)
                row[3] += value
    agg = [[n, m, c, lo, hi, total // c] for (n, m), (c, lo, hi, total) in sorted(acc.items())]
    return {
        "id": batch_id,
        "mesh": mesh,
        "leader": leader,
        "readings": readings,
        "agg": agg,
        "members": members if members is not None else [[leader, 900, 900, 900, 1, 0]],
        "dropped": dropped or [],
        "elections": elections or [],
    }


class _LeaderLink:
    """What a leader's gateway link does on any transport: encode BATCH frames (every send a
    new frame, a new counter), take the gateway's BATCH_ACKs for this leader, and resend a
    batch until it is acknowledged. Subclasses move the bytes."""

    deliver_timeout = 0.5  # seconds to wait for an ack before sending again
    deliver_attempts = 40

    def __init__(self, mesh: str, leader: str, key: bytes | None, boot: int) -> None:
        self.mesh = mesh
        self.leader = leader
        # Batches are checked with the gateway's schema before they go out, as a Pi agent's.
        self.codec = wire.Codec(
            mesh, key, strict_cbor.dumps, strict_cbor.loads, boot=boot, check_batch=check_batch
        )
        self.acks: list[list[Any]] = []
        self._now = 0

    def send_frame(self, data: bytes) -> None:
        raise NotImplementedError

    def _next_frame(self, timeout: float) -> bytes | None:
        """The next frame from the gateway within ``timeout`` seconds, or None."""
        raise NotImplementedError

    def frame(self, term: int, batch: dict[str, Any]) -> bytes:
        return bytes(self.codec.encode(Msg(BATCH, self.leader, term=term, body=batch)))

    def send(self, term: int, batch: dict[str, Any]) -> None:
        self.send_frame(self.frame(term, batch))

    def receive_ack(self, timeout: float) -> list[Any] | None:
        """The next BATCH_ACK body ``[batch_id, status, highest_term]``, or None on time-out."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._next_frame(left)
            if data is None:
                return None
            self._now += 1
            try:
                msg = self.codec.decode(data, self._now)
            except wire.WireError:
                continue
            if msg.kind == BATCH_ACK and msg.target == self.leader:
                self.acks.append(msg.body)
                return list(msg.body)

    def deliver(
        self,
        term: int,
        batch: dict[str, Any],
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> list[Any]:
        """Send until acknowledged (as a leader resends an unacknowledged batch)."""
        wait = self.deliver_timeout if timeout is None else timeout
        for _ in range(self.deliver_attempts if attempts is None else attempts):
            self.send(term, batch)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                ack = self.receive_ack(deadline - time.monotonic())
                if ack is not None and ack[0] == batch["id"]:
                    return ack
        raise TimeoutError("batch %r of %s never acknowledged" % (batch["id"], self.leader))


class BatchSender(_LeaderLink):
    """A leader's gateway link over UDP."""

    def __init__(
        self,
        mesh: str,
        leader: str,
        gateway: tuple[str, int],
        key: bytes | None = None,
        boot: int = 1,
        bind: str = "127.0.0.1",
    ) -> None:
        super().__init__(mesh, leader, key, boot)
        self.gateway = gateway
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))

    def close(self) -> None:
        self.sock.close()

    def send_frame(self, data: bytes) -> None:
        self.sock.sendto(data, self.gateway)

    def _next_frame(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return self.sock.recvfrom(8192)[0] if ready else None


class MqttBatchSender(_LeaderLink):
    """A leader's gateway link over MQTT: publish on ``P/<mesh>/batch``, acks on
    ``P/<mesh>/batch-ack/<leader>``."""

    deliver_timeout = 1.0
    deliver_attempts = 30

    def __init__(
        self,
        mesh: str,
        leader: str,
        broker: tuple[str, int],
        key: bytes | None = None,
        prefix: str = topics.DEFAULT_PREFIX,
        boot: int = 1,
        tls_ca: str | None = None,
        user: tuple[str, str] | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        super().__init__(mesh, leader, key, boot)
        self.topic = topics.topic(prefix, mesh, topics.BATCH)
        self._acks: queue.Queue[bytes] = queue.Queue()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="test-%s-%s" % (mesh, leader),
            protocol=mqtt.MQTTv5,
        )
        ack_topic = topics.topic(prefix, mesh, topics.BATCH_ACK, leader)
        client.on_connect = lambda c, u, f, r, p: c.subscribe(
            ack_topic, topics.qos(topics.BATCH_ACK)
        )
        client.on_subscribe = lambda c, u, m, r, p: self._subscribed.set()
        client.on_message = lambda c, u, message: self._acks.put(bytes(message.payload))
        if tls_ca:
            client.tls_set(ca_certs=tls_ca)
        if user:
            client.username_pw_set(*user)
        client.connect(broker[0], broker[1])
        client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("no subscription to %s" % ack_topic)
        self.client = client

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send_frame(self, data: bytes, topic: str | None = None) -> None:
        qos = topics.qos(topics.BATCH)
        self.client.publish(topic or self.topic, data, qos=qos).wait_for_publish(10)

    def _next_frame(self, timeout: float) -> bytes | None:
        try:
            return self._acks.get(timeout=timeout)
        except queue.Empty:
            return None
