"""Fencing at a real gateway process: a forged huge term from a sender never seen in the mesh
does not fence the real leader (also after a restart), and an operator resets a fence by CLI
and API, logged, recorded, counted and shown on the dashboard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED
from gateway.fence import MAX_TERM
from testkit.gateway import BatchSender, GatewayProcess, make_batch
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT

TOKEN = "fence-token"
MEMBERS = [["pi-1", 900, 900, 900, 1, 0], ["pi-2", 700, 700, 900, 0, 40]]


def readings(node: str, seqs: range) -> list[list[Any]]:
    return [[node, 1, s, 1_700_000_000_000 + s, {"temp": 20_000 + s}] for s in seqs]


def metric(gw: GatewayProcess, name: str) -> float | None:
    for line in httpx.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def stored_nodes(gw: GatewayProcess) -> dict[str, int]:
    rows = httpx.get(gw.url + "/api/meshes/m/readings", timeout=5).json()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["node"]] = counts.get(row["node"], 0) + 1
    return counts


def test_a_forged_huge_term_does_not_fence_the_real_leader(tmp_path: Path) -> None:
    gw = GatewayProcess(str(tmp_path / "gw.db")).start()
    try:
        leader = BatchSender("m", "pi-1", gw.udp)
        forger = BatchSender("m", "rogue", gw.udp)
        first = make_batch(1, "m", "pi-1", readings("pi-1", range(0, 10)), members=MEMBERS)
        assert leader.deliver(3, first) == [1, ACK_OK, 3]
        forged = make_batch(1, "m", "rogue", readings("rogue", range(0, 5)))
        assert forger.deliver(MAX_TERM, forged) == [1, ACK_REJECTED, 3]
        # The real leader goes on in its term.
        second = make_batch(2, "m", "pi-1", readings("pi-1", range(10, 20)), members=MEMBERS)
        assert leader.deliver(3, second) == [2, ACK_OK, 3]
        assert httpx.get(gw.url + "/api/meshes/m", timeout=5).json()["term"] == 3
        alerts = httpx.get(gw.url + "/api/alerts", params={"active": "1"}, timeout=5).json()
        assert [(a["kind"], a["node"]) for a in alerts] == [("term_jump", "rogue")]
        assert "4294967295" in alerts[0]["message"]
        assert metric(gw, "meshelect_gateway_term_jumps_refused_total") == 1.0
        assert "refused" in "".join(gw.output)  # logged

        gw.kill()  # a crash: whatever the gateway knows must come from its database
        gw.start()
        again = make_batch(2, "m", "rogue", readings("rogue", range(5, 10)))
        assert forger.deliver(MAX_TERM, again) == [2, ACK_REJECTED, 3]
        third = make_batch(3, "m", "pi-1", readings("pi-1", range(20, 30)), members=MEMBERS)
        assert leader.deliver(3, third) == [3, ACK_OK, 3]
        # A member the gateway has seen may move the fence on: a new leader, many terms on.
        pi2 = BatchSender("m", "pi-2", gw.udp)
        assert pi2.deliver(40, make_batch(1, "m", "pi-2", readings("pi-2", range(0, 3))))[1] == 0
        assert stored_nodes(gw) == {"pi-1": 30, "pi-2": 3}
    finally:
        assert gw.stop() == 0


def fence_reset_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "fence-reset", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def mesh_state(gw: GatewayProcess) -> dict[str, Any]:
    return dict(httpx.get(gw.url + "/api/meshes/m", timeout=5).json())


def test_operator_resets_a_fence_by_cli_and_api(tmp_path: Path) -> None:
    db = str(tmp_path / "gw.db")
    gw = GatewayProcess(db, "--api-token", TOKEN).start()
    try:
        leader = BatchSender("m", "pi-1", gw.udp)
        buggy = BatchSender("m", "pi-2", gw.udp)  # a member: it may raise the fence freely
        batch_id = iter(range(1, 100))

        def lead(term: int) -> list[Any]:
            return leader.deliver(
                term, make_batch(next(batch_id), "m", "pi-1", [], members=MEMBERS)
            )

        assert lead(5)[1] == ACK_OK
        assert buggy.deliver(MAX_TERM, make_batch(1, "m", "pi-2", []))[1] == ACK_OK
        assert lead(5)[1:] == [ACK_FENCED, MAX_TERM]

        # The CLI, while the gateway runs on the same database.
        assert fence_reset_cli("--mesh", "nope", "--db", db).returncode == 1
        assert fence_reset_cli("--mesh", "m", "--db", str(tmp_path / "none.db")).returncode == 2
        done = fence_reset_cli("--mesh", "m", "--db", db)
        assert done.returncode == 0, done.stderr
        assert "from term 4294967295 to term 0" in done.stdout
        # The running gateway applies it within a tick: live view, log.
        reset = poll_until(lambda: mesh_state(gw)["fence_reset"], 10)
        assert reset is not None and (reset["source"], reset["to_term"]) == ("cli", 0)
        assert lead(5)[1:] == [ACK_OK, 5]
        assert "fence of mesh m reset by operator (cli) from term 4294967295 to term 0" in "".join(
            gw.output
        )

        # The API: token required, mesh and term checked.
        url = gw.url + "/api/meshes/m/fence-reset"
        assert httpx.post(url, timeout=5).status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert httpx.post(url, headers=bad, timeout=5).status_code == 401
        auth = {"Authorization": "Bearer " + TOKEN}
        assert httpx.post(gw.url + "/api/meshes/x/fence-reset", headers=auth).status_code == 404
        assert httpx.post(url, params={"term": -1}, headers=auth, timeout=5).status_code == 400
        assert buggy.deliver(MAX_TERM, make_batch(2, "m", "pi-2", []))[1] == ACK_OK
        answer = httpx.post(url, params={"term": 5}, headers=auth, timeout=5)
        assert answer.status_code == 200
        body = answer.json()
        assert (body["from_term"], body["to_term"], body["source"]) == (MAX_TERM, 5, "api")
        state = mesh_state(gw)
        assert state["term"] == 5 and state["fence_resets"] == 2
        assert state["fence_reset"]["source"] == "api"
        assert lead(5)[1] == ACK_OK
        assert metric(gw, 'meshelect_mesh_fence_resets{mesh="m"}') == 2.0
        assert metric(gw, "meshelect_gateway_fence_resets_total") == 2.0
    finally:
        assert gw.stop() == 0
    # The record stays with the database.
    again = GatewayProcess(db).start()
    try:
        state = mesh_state(again)
        assert state["fence_resets"] == 2 and state["fence_reset"]["to_term"] == 5
    finally:
        again.stop()


@pytest.mark.browser
def test_dashboard_shows_a_fence_reset_and_a_refused_jump(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    from tests.test_dashboard_browser import dashboard

    db = str(tmp_path / "gw.db")
    gw = GatewayProcess(db, "--api-token", TOKEN).start()
    try:
        leader = BatchSender("m", "pi-1", gw.udp)
        assert leader.deliver(3, make_batch(1, "m", "pi-1", [], members=MEMBERS))[1] == ACK_OK
        with dashboard(gw.url) as (page, errors):
            mesh = page.locator('section.mesh[data-mesh="m"]')
            expect(mesh.get_by_test_id("leader")).to_have_text("pi-1")
            forger = BatchSender("m", "rogue", gw.udp)
            assert forger.deliver(MAX_TERM, make_batch(1, "m", "rogue", []))[1] == ACK_REJECTED
            expect(mesh.locator('ul.alerts li[data-kind="term_jump"]')).to_contain_text("rogue")
            assert fence_reset_cli("--mesh", "m", "--db", db, "--term", "2").returncode == 0
            reset = mesh.get_by_test_id("fence-reset")
            expect(reset).to_contain_text("fence reset by operator (cli) at term 2")
            expect(mesh.locator("ol.timeline li.fence-reset-entry")).to_contain_text("was 3")
            page.screenshot(path=str(artifacts_dir / "dashboard-fence-reset.png"))
            assert errors == []
    finally:
        gw.stop()
