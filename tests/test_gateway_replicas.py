"""Gateway replicas on one broker (MQTT 5 shared subscription) and one PostgreSQL, all real:
each replica's API and live feed show every mesh, whichever replica took its batches; alerts
are raised once between them; a replica killed under load loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.core.messages import ACK_OK
from testkit.broker import Mosquitto
from testkit.gateway import GatewayProcess, MqttBatchSender, make_batch, parse_counters
from testkit.meshlab import agent_config
from testkit.postgres import PostgresServer, available
from testkit.tools import SOURCE_ROOT, python_env
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


class Feed:
    """A replica's live feed (``/api/events``), read by a thread: every event, in order."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=None))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(gw.url,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "no snapshot from %s" % gw.url

    def _read(self, url: str) -> None:
        kind = "message"
        try:
            with self._client.stream("GET", url + "/api/events") as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        with self._lock:
                            self.events.append(dict(json.loads(line[6:]), event=kind))
                        self._ready.set()
        except httpx.HTTPError:
            pass  # closed at the end of the test

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind]

    def close(self) -> None:
        self._client.close()


def rows(node: str, boot: int, seqs: range) -> list[list[Any]]:
    return [[node, boot, s, 1_700_000_000_000 + s, {"temp": 20_000 + s}] for s in seqs]


def counters(gw: GatewayProcess) -> dict[str, float]:
    return parse_counters(httpx.get(gw.url + "/metrics", timeout=10).text)


def api(gw: GatewayProcess, path: str) -> Any:
    response = httpx.get(gw.url + path, timeout=10)
    response.raise_for_status()
    return response.json()


def test_every_replica_shows_every_mesh_live(server: PostgresServer, mosquitto: Mosquitto) -> None:
    """Three meshes, their batches split between two replicas by the broker: each replica's
    API and live feed show all three, with every node, every reading and each new leader."""
    url = server.new_database()
    replicas = start_replicas(url, mosquitto, 2)
    feeds = [Feed(gw) for gw in replicas]
    meshes = {"north": "n-1", "south": "s-1", "west": "w-1"}
    senders = {
        mesh: MqttBatchSender(mesh, leader, (mosquitto.host, mosquitto.port))
        for mesh, leader in meshes.items()
    }
    sent: dict[str, set[tuple[str, int, int]]] = {mesh: set() for mesh in meshes}
    try:
        for batch_id in range(12):
            for mesh, leader in sorted(meshes.items()):
                members = [[leader, 900, 900, 900, 1, 0]] + [
                    ["%s-m%d" % (mesh, i), 700, 700, 700, 0, 100] for i in (1, 2)
                ]
                readings = [
                    row
                    for node, _, *_ in members
                    for row in rows(node, 1, range(5 * batch_id, 5 * batch_id + 5))
                ]
                body = make_batch(batch_id, mesh, leader, readings, members=members)
                assert senders[mesh].deliver(1, body)[1] == ACK_OK
                sent[mesh] |= {(r[0], r[1], r[2]) for r in readings}
        # The broker gave each replica some of the batches, not all of them.
        taken = [counters(gw).get(OK_BATCHES, 0) for gw in replicas]
        assert sum(taken) == 36 and min(taken) > 0, taken

        def all_meshes_everywhere() -> bool:
            for gw in replicas:
                listed = {m["name"]: m for m in api(gw, "/api/meshes")}
                if sorted(listed) != sorted(meshes):
                    return False
                for mesh, leader in meshes.items():
                    state = listed[mesh]
                    if (state["leader"], state["term"], len(state["members"])) != (leader, 1, 3):
                        return False
            return True

        poll_until(all_meshes_everywhere, timeout=WAIT_S)
        assert [api(gw, "/healthz")["replicas"] for gw in replicas] == [True, True]

        def feeds_have_every_reading() -> bool:
            for feed in feeds:
                seen: dict[str, set[tuple[str, int, int]]] = {mesh: set() for mesh in meshes}
                for event in feed.of("batch"):
                    seen[event["mesh"]] |= {(r[0], r[1], r[2]) for r in event["readings"]}
                if seen != sent:
                    return False
            return True

        poll_until(feeds_have_every_reading, timeout=WAIT_S)
        for feed in feeds:
            # Each feed had batch events it took itself and ones another replica took.
            remote = {e.get("remote", False) for e in feed.of("batch")}
            assert remote == {True, False}
            assert {e["mesh"]["name"] for e in feed.of("mesh")} == set(meshes)

        # A new leader in one mesh: both replicas show it, and the election, at once.
        senders["north"].close()
        senders["north"] = MqttBatchSender("north", "n-2", (mosquitto.host, mosquitto.port))
        members = [["n-2", 950, 950, 950, 1, 0], ["n-1", 900, 900, 900, 0, 9000]]
        for batch_id in range(100, 104):
            body = make_batch(batch_id, "north", "n-2", rows("n-2", 1, range(batch_id, batch_id + 1)), members=members)  # fmt: skip
            assert senders["north"].deliver(2, body)[1] == ACK_OK
        for gw, feed in zip(replicas, feeds, strict=True):
            poll_until(
                lambda gw=gw: api(gw, "/api/meshes/north")["leader"] == "n-2", timeout=WAIT_S
            )
            poll_until(
                lambda feed=feed: any(
                    (e["mesh"], e["term"], e["leader"]) == ("north", 2, "n-2")
                    for e in feed.of("election")
                ),
                timeout=WAIT_S,
            )
            elections = [e for e in feed.of("election") if e["mesh"] == "north"]
            assert [(e["term"], e["leader"]) for e in elections].count((2, "n-2")) == 1
        # A page opened now gets all of it in its first event, from either replica.
        for gw in replicas:
            late = Feed(gw)
            snapshot = late.of("snapshot")[0]
            late.close()
            assert sorted(m["name"] for m in snapshot["meshes"]) == sorted(meshes)
            assert sorted(snapshot["history"]) == sorted(meshes)
            assert {(e["mesh"], e["term"], e["leader"]) for e in snapshot["elections"]} >= {
                ("north", 2, "n-2"),
                ("south", 1, "s-1"),
                ("west", 1, "w-1"),
            }
    finally:
        for sender in senders.values():
            sender.close()
        for feed in feeds:
            feed.close()
        for gw in replicas:
            gw.stop()


def _agent(tmp_path: Path, node: str, broker: Mosquitto) -> subprocess.Popen[bytes]:
    state = tmp_path / node
    state.mkdir()
    config = state / "agent.toml"
    config.write_text(
        agent_config(
            node,
            "replicated",
            str(state),
            950 if node == "a-1" else 800,  # a-1 leads; nobody's battery is low
            transport="mqtt",
            broker="%s:%d" % (broker.host, broker.port),
            sample_ms=300,
        )
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agent.runtime", "--config", str(config)],
        cwd=SOURCE_ROOT,
        env=python_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(state / "agent.log", "wb"),
    )


def test_an_alert_is_raised_once_between_replicas(
    server: PostgresServer, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Three real agents over MQTT, two replicas; one agent killed: both replicas notice the
    silent node, one alert row is stored, one replica raises it, and each replica's live feed
    and API show it once, under the same id."""
    import psycopg

    url = server.new_database()
    replicas = start_replicas(url, mosquitto, 2, "--silent-after", "3s")
    feeds = [Feed(gw) for gw in replicas]
    agents = {node: _agent(tmp_path, node, mosquitto) for node in ("a-1", "a-2", "a-3")}
    try:

        def all_heard() -> bool:
            for gw in replicas:
                meshes = api(gw, "/api/meshes")
                if not meshes or len(meshes[0]["members"]) != 3:
                    return False
            return True

        poll_until(all_heard, timeout=WAIT_S)
        # The broker splits the leader's batches between the replicas.
        poll_until(
            lambda: all(counters(gw).get(OK_BATCHES, 0) > 0 for gw in replicas),
            timeout=WAIT_S,
        )
        leader = api(replicas[0], "/api/meshes")[0]["leader"]
        victim = "a-3" if leader != "a-3" else "a-2"
        agents[victim].kill()
        agents[victim].wait(5)

        def silent_alerts() -> list[tuple[Any, ...]]:
            with psycopg.connect(url) as conn:
                return conn.execute(
                    "SELECT id, cleared_ms FROM alerts WHERE kind = 'node_silent' AND node = %s",
                    (victim,),
                ).fetchall()

        poll_until(silent_alerts, timeout=WAIT_S)
        # Both replicas' timers have had their chance (a tick is 1 s) and every note is in.
        time.sleep(4)
        stored = silent_alerts()
        assert len(stored) == 1 and stored[0][1] is None, stored
        alert_id = stored[0][0]
        raised = [counters(gw).get("meshelect_gateway_alerts_raised_total", 0) for gw in replicas]
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()
        assert row is not None and sum(raised) == row[0], raised  # every alert raised once
        for gw, feed in zip(replicas, feeds, strict=True):
            published = [
                e for e in feed.of("alert") if e["kind"] == "node_silent" and e["node"] == victim
            ]
            assert [e["id"] for e in published] == [alert_id]
            open_alerts = api(gw, "/api/meshes/replicated")["alerts"]
            assert [a["id"] for a in open_alerts if a["node"] == victim] == [alert_id]
    finally:
        for process in agents.values():
            if process.poll() is None:
                process.terminate()
        for process in agents.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for feed in feeds:
            feed.close()
        for gw in replicas:
            gw.stop()


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
