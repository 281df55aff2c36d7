"""Gateway replicas on one broker (MQTT 5 shared subscription) and one PostgreSQL, all real:
a replica killed under load loses nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.core.messages import ACK_OK
from testkit.broker import Mosquitto
from testkit.gateway import GatewayProcess, MqttBatchSender, make_batch
from testkit.postgres import PostgresServer, available
from testkit.waiting import poll_until

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not available(), reason="apt-get install postgresql"),
]

WAIT_S = 30.0
OK_BATCHES = 'meshelect_gateway_batches_total{status="ok",transport="mqtt"}'


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    pg = PostgresServer().start()
    yield pg
    pg.stop()


def start_replicas(url: str, broker: Mosquitto, count: int, *extra: str) -> list[GatewayProcess]:
    args = ["--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    return [
        GatewayProcess(
            url, *args, "--mqtt-shared-group", "gw", "--node-id", "gw-%d" % i, *extra
        ).start()
        for i in range(count)
    ]


def rows(node: str, boot: int, seqs: range) -> list[list[Any]]:
    return [[node, boot, s, 1_700_000_000_000 + s, {"temp": 20_000 + s}] for s in seqs]


def test_a_replica_killed_under_load_loses_nothing(
    server: PostgresServer, mosquitto: Mosquitto
) -> None:
    """Four leaders send at once, each with batches in flight, while one of two replicas is
    killed: every reading a leader took is stored once (taken, stored, lost, duplicated)."""
    import psycopg

    url = server.new_database()
    replicas = start_replicas(url, mosquitto, 2)
    leaders = ["l-%d" % i for i in range(4)]
    acked: dict[str, int] = dict.fromkeys(leaders, 0)
    errors: list[BaseException] = []

    def lead(leader: str) -> None:
        sender = MqttBatchSender("load-" + leader, leader, (mosquitto.host, mosquitto.port))
        try:
            batches = [
                make_batch(i, "load-" + leader, leader, rows(leader, 1, range(20 * i, 20 * i + 20)))
                for i in range(60)
            ]
            for i, batch in enumerate(batches):
                if i % 4 == 0 and i + 4 <= len(batches):
                    for ahead in batches[i + 1 : i + 4]:  # in flight, not yet acknowledged
                        sender.send_frame(sender.frame(1, ahead))
                assert sender.deliver(1, batch)[1] == ACK_OK
                acked[leader] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            sender.close()

    threads = [threading.Thread(target=lead, args=(leader,)) for leader in leaders]
    try:
        for thread in threads:
            thread.start()
        poll_until(lambda: sum(acked.values()) >= 60, timeout=WAIT_S)
        replicas[0].kill()
        for thread in threads:
            thread.join(120)
        assert errors == []
    finally:
        for gw in replicas:
            gw.stop()
    taken = 20 * sum(acked.values())
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT (mesh, node, boot, seq)) FROM readings"
        ).fetchone()
    assert row is not None
    stored, distinct = row
    lost, duplicated = taken - distinct, stored - distinct
    print(
        "replica killed under load: taken %d, stored %d, lost %d, duplicated %d"
        % (taken, stored, lost, duplicated)
    )
    assert taken == 4 * 60 * 20
    assert (stored, lost, duplicated) == (taken, 0, 0)
