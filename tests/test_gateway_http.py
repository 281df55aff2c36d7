"""HTTP API, live feed (SSE), metrics and health of a real gateway process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.gateway import BatchSender, GatewayProcess, make_batch

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    db = tmp_path_factory.mktemp("gw") / "gw.db"
    gw = GatewayProcess(
        str(db), "--api-token", TOKEN, "--low-battery", "300", "--silent-after", "40s"
    )
    try:
        gw.start()
        sender = BatchSender("green", "pi-1", gw.udp)
        members = [["pi-1", 900, 900, 800, 1, 0], ["pi-2", 500, 250, 700, 0, 120]]
        for i in range(1, 4):
            rows = [[n, 1, 10 * i + k, 1_700_000_000_000 + 1000 * (10 * i + k), {"temp": 21_000 + k}]
                    for n in ("pi-1", "pi-2") for k in range(5)]  # fmt: skip
            sender.deliver(2, make_batch(i, "green", "pi-1", rows, members=members,
                                         elections=[[2, "pi-1", "start"]]))  # fmt: skip
        yield gw
    finally:
        gw.stop()


def api(gw: GatewayProcess, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(gw.url + path, timeout=5, **kwargs)


def test_meshes_and_nodes(gateway: GatewayProcess) -> None:
    meshes = api(gateway, "/api/meshes").json()
    assert [(m["name"], m["leader"], m["term"]) for m in meshes] == [("green", "pi-1", 2)]
    members = {m["node"]: m for m in meshes[0]["members"]}
    assert members["pi-1"]["leader"] and not members["pi-2"]["leader"]
    nodes = api(gateway, "/api/meshes/green/nodes").json()
    assert [(n["node"], n["battery"], n["link"]) for n in nodes] == [
        ("pi-1", 900, 800),
        ("pi-2", 250, 700),
    ]


def test_readings_with_time_ranges(gateway: GatewayProcess) -> None:
    rows = api(gateway, "/api/meshes/green/readings", params={"node": "pi-2"}).json()
    assert len(rows) == 15 and {r["node"] for r in rows} == {"pi-2"}
    assert rows[0]["metrics"] == {"temp": 21_000}
    newest = rows[-1]["received_ms"]
    later = api(gateway, "/api/meshes/green/readings", params={"since": newest + 1}).json()
    assert later == []
    limited = api(gateway, "/api/meshes/green/readings", params={"limit": 4}).json()
    assert len(limited) == 4
    agg = api(gateway, "/api/meshes/green/aggregates").json()
    assert {(a["node"], a["metric"], a["count"]) for a in agg} == {
        ("pi-1", "temp", 5),
        ("pi-2", "temp", 5),
    }


def test_elections_and_alerts(gateway: GatewayProcess) -> None:
    elections = api(gateway, "/api/elections", params={"mesh": "green"}).json()
    assert [(e["term"], e["leader"], e["reason"]) for e in elections] == [
        (2, "pi-1", "first election")
    ]
    alerts = api(gateway, "/api/alerts", params={"active": "1"}).json()
    assert ("low_battery", "pi-2") in {(a["kind"], a["node"]) for a in alerts}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/meshes/nope", 404),
        ("/api/meshes/nope/readings", 404),
        ("/api/elections?mesh=nope", 404),
        ("/api/meshes/green/readings?since=abc", 400),
        ("/api/meshes/green/readings?limit=0", 400),
        ("/api/meshes/green/readings?limit=99999999", 400),
        ("/api/meshes/green/readings?since=10&until=5", 400),
        ("/api/meshes/green/readings?since=-5", 400),
        ("/no/such/page", 404),
        ("/static/../../etc/passwd", 404),
    ],
)
def test_garbage_requests_get_clear_4xx(gateway: GatewayProcess, path: str, status: int) -> None:
    response = api(gateway, path)
    assert response.status_code == status
    if path.startswith("/api"):
        assert "error" in response.json()


def test_write_api_needs_the_token(gateway: GatewayProcess) -> None:
    alert = next(
        a for a in api(gateway, "/api/alerts?active=1").json() if a["kind"] == "low_battery"
    )
    url = gateway.url + "/api/alerts/%d/clear" % alert["id"]
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    assert httpx.get(url).status_code == 405
    good = {"Authorization": "Bearer " + TOKEN}
    assert httpx.post(url, headers=good).json() == {"cleared": alert["id"]}
    assert httpx.post(url, headers=good).status_code == 404  # already cleared
    assert httpx.post(gateway.url + "/api/alerts/x/clear", headers=good).status_code == 400


def test_no_demo_buttons_outside_demo_mode(gateway: GatewayProcess) -> None:
    """Without --demo-control the demo's routes do not exist (the dashboard shows no buttons)."""
    assert api(gateway, "/api/demo").status_code == 404
    response = httpx.post(gateway.url + "/api/demo/kill", headers={"X-Meshelect-Demo": "1"})
    assert response.status_code == 404


def test_write_api_disabled_without_token(tmp_path: Path) -> None:
    with GatewayProcess(str(tmp_path / "gw.db")) as gw:
        response = httpx.post(gw.url + "/api/alerts/1/clear", headers={"Authorization": "Bearer x"})
        assert response.status_code == 403


def test_metrics_and_health(gateway: GatewayProcess) -> None:
    response = api(gateway, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "meshelect_gateway_batches_total",
        "meshelect_gateway_readings_stored_total 30.0",
        "meshelect_gateway_dedup_hits_total",
        "meshelect_gateway_fenced_batches_total",
        "meshelect_gateway_elections_total 1.0",
        "meshelect_gateway_lost_readings_total",
        "meshelect_gateway_ingest_rate_readings_per_second",
        'meshelect_mesh_term{mesh="green"} 2.0',
        'meshelect_mesh_leader_info{leader="pi-1",mesh="green"} 1.0',
    ):
        assert name in text
    health = api(gateway, "/healthz").json()
    assert health["status"] == "ok" and health["meshes"] == 1


def test_dashboard_assets_are_local(gateway: GatewayProcess) -> None:
    page = api(gateway, "/")
    assert page.status_code == 200 and "meshelect" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for asset in (
        "/static/app.js",
        "/static/demo.js",
        "/static/style.css",
        "/vendor/plotly.min.js",
    ):
        assert api(gateway, asset).status_code == 200, asset
    icon = api(gateway, "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file's header


def read_event(lines: Iterator[str]) -> dict[str, Any]:
    """The next SSE message (comments skipped) as {"event": type, **data}."""
    event = "message"
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            return {"event": event, **json.loads(line[6:])}
    raise AssertionError("stream ended")


def test_live_feed_sends_snapshot_then_changes(gateway: GatewayProcess) -> None:
    with httpx.stream("GET", gateway.url + "/api/events", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        snapshot = read_event(lines)
        assert snapshot["event"] == "snapshot"
        assert [m["leader"] for m in snapshot["meshes"]] == ["pi-1"]
        # The page greys a node out by the gateway's own --silent-after.
        assert snapshot["silent_ms"] == 40_000
        # The charts' recent past comes along: the page draws without asking again.
        past = snapshot["history"]["green"]
        assert len(past["readings"]) == 30 and len(past["aggregates"]) == 6
        first = past["readings"][0]  # the oldest: [node, boot, seq, t_ms, received_ms, metrics]
        assert first[:4] == ["pi-1", 1, 10, 1_700_000_010_000] and first[5] == {"temp": 21_000}
        assert snapshot["units"]["kinds"]["battery"] == {
            "label": "battery",
            "unit": "%",
            "scale": 0.1,
        }
        new = BatchSender("green", "pi-2", gateway.udp)
        rows = [["pi-2", 2, 1, 1_700_000_100_000, {"temp": 19_000}]]
        new.deliver(
            3, make_batch(1, "green", "pi-2", rows, members=[["pi-2", 600, 600, 600, 1, 0]])
        )
        seen: dict[str, dict[str, Any]] = {}
        while not {"batch", "election", "mesh"} <= set(seen):
            event = read_event(lines)
            seen[event["event"]] = event
    assert seen["batch"]["readings"] == rows and seen["batch"]["inserted"] == 1
    assert (seen["election"]["leader"], seen["election"]["term"]) == ("pi-2", 3)
    assert seen["mesh"]["mesh"]["leader"] == "pi-2"
