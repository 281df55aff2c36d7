"""The gateway on PostgreSQL: a real server (testkit/postgres.py), several writers, a real
gateway process chosen by ``--db postgresql://...``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from agent.core.messages import ACK_FENCED, ACK_OK
from gateway.batch import parse_batch
from testkit.broker import Mosquitto
from testkit.gateway import BatchSender, GatewayProcess, MqttBatchSender, make_batch
from testkit.postgres import PostgresServer, available

pytestmark = pytest.mark.skipif(not available(), reason="apt-get install postgresql")


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    pg = PostgresServer().start()
    yield pg
    pg.stop()


def rows(leader: str, seqs: range) -> list[list[object]]:
    return [[leader, 1, s, 1000 * s, {"temp": 20_000 + s}] for s in seqs]


def test_two_writers_store_each_reading_once_and_fence_together(server: PostgresServer) -> None:
    from gateway.pgstorage import PostgresStorage

    url = server.new_database()
    writers = [PostgresStorage(url), PostgresStorage(url)]
    errors: list[BaseException] = []

    def write(storage: PostgresStorage) -> None:
        try:
            for batch_id in range(1, 41):  # both send the same batches: overlapping readings
                body = make_batch(batch_id, "m", "a", rows("a", range(batch_id, batch_id + 10)))
                outcome = storage.ingest(1, parse_batch(body, "m", "a"), 1000 + batch_id)
                assert outcome.status == ACK_OK
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert writers[0].reading_count() == 49  # seqs 1..49, each once
    # A new term through one writer fences the old leader's batch through the other.
    body = make_batch(99, "m", "b", rows("b", range(1, 2)), members=[["b", 1, 1, 1, 0, 0]])
    assert writers[0].ingest(2, parse_batch(body, "m", "b"), 5000).status == ACK_OK
    old = make_batch(100, "m", "a", rows("a", range(60, 61)))
    assert writers[1].ingest(1, parse_batch(old, "m", "a"), 5001).status == ACK_FENCED
    for writer in writers:
        writer.close()


def test_gateway_process_on_postgresql(server: PostgresServer) -> None:
    url = server.new_database()
    with GatewayProcess(url) as gw:
        sender = BatchSender("m", "lead", gw.udp)
        for batch_id in range(1, 4):
            ack = sender.deliver(
                1,
                make_batch(
                    batch_id, "m", "lead", rows("lead", range(batch_id * 5, batch_id * 5 + 5))
                ),
            )
            assert ack[1] == ACK_OK
        sender.close()
        meshes = httpx.get(gw.url + "/api/meshes", timeout=10).json()
        assert [m["name"] for m in meshes] == ["m"]
        readings = httpx.get(gw.url + "/api/meshes/m/readings", timeout=10).json()
        assert len(readings) == 15


@pytest.mark.broker
def test_replicas_share_one_subscription_and_lose_nothing_when_one_dies(
    server: PostgresServer, mosquitto: Mosquitto
) -> None:
    """Two gateways on one broker (MQTT 5 shared subscription) and one PostgreSQL: every
    reading stored once; one replica killed while batches are in flight loses nothing."""
    import psycopg

    url = server.new_database()
    broker = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port)]
    replicas = [
        GatewayProcess(url, *broker, "--mqtt-shared-group", "gw", "--node-id", "gw-%d" % i).start()
        for i in range(2)
    ]
    sender = MqttBatchSender("field", "pi-1", (mosquitto.host, mosquitto.port))
    batches = [
        make_batch(i, "field", "pi-1", rows("pi-1", range(10 * i, 10 * i + 10))) for i in range(30)
    ]
    try:
        for batch in batches[:10]:
            assert sender.deliver(1, batch)[1] == ACK_OK
        for batch in batches[10:14]:
            sender.send_frame(sender.frame(1, batch))  # in flight, unacknowledged
        replicas[0].kill()
        for batch in batches[10:]:  # resent until acknowledged, as a leader does
            assert sender.deliver(1, batch)[1] == ACK_OK
    finally:
        sender.close()
        for gw in replicas:
            gw.stop()
    with psycopg.connect(url) as conn:
        count, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (node, boot, seq)) FROM readings"
        ).fetchone() or (0, 0)
    assert (count, distinct) == (300, 300)


def test_writers_raise_an_alert_once_and_announce_what_they_write(server: PostgresServer) -> None:
    """Two writers raise the same alert: one row, one ``new``, the same id for both; each write
    the other replicas must show is announced on the channel (gateway/pgnotify.py)."""
    import psycopg

    from gateway import pgnotify
    from gateway.pgstorage import PostgresStorage

    url = server.new_database()
    first, second = PostgresStorage(url), PostgresStorage(url)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN " + pgnotify.CHANNEL)
        raised = first.raise_alert("m", "node_silent", "b", "b silent for 15 s", 1000)
        again = second.raise_alert("m", "node_silent", "b", "b silent for 16 s", 2000)
        assert (raised["new"], again["new"]) == (True, False)
        assert again["id"] == raised["id"]
        assert (again["raised_ms"], again["message"]) == (1000, "b silent for 15 s")
        assert second.clear_alert(raised["id"], 3000) is True
        assert first.clear_alert(raised["id"], 3001) is False
        reopened = first.raise_alert("m", "node_silent", "b", "b silent again", 4000)
        assert reopened["new"] and reopened["id"] != raised["id"]  # a new episode
        assert first.add_election("m", 2, "b", "crash", 5000) is True
        assert second.add_election("m", 2, "b", "crash", 5001) is False
        body = make_batch(1, "m", "b", rows("b", range(3)))
        assert first.ingest(2, parse_batch(body, "m", "b"), 6000).status == ACK_OK
        notes = [
            (n.pid, pgnotify.decode(n.payload))
            for n in listener.notifies(timeout=2.0, stop_after=5)
        ]
    pids = [pid for pid, _ in notes]
    assert pids == [first.backend_pid, second.backend_pid] + [first.backend_pid] * 3
    assert [(n["k"], n.get("id"), n.get("cl")) for _, n in notes if n and n["k"] in "ac"] == [
        ("a", raised["id"], None),
        ("c", raised["id"], 3000),
        ("a", reopened["id"], None),
    ]
    assert notes[-2][1] == {"k": "e", "m": "m", "t": 2, "l": "b", "r": "crash", "at": 5000}
    assert notes[-1][1] == {
        "k": "b", "m": "m", "l": "b", "t": 2, "s": ACK_OK, "i": 3, "d": 0, "at": 6000
    }  # fmt: skip
    open_rows = first.alerts("m", True, 10)
    assert [row["id"] for row in open_rows] == [reopened["id"]]
    first.close()
    second.close()
