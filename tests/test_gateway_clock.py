"""A real gateway process whose wall clock steps 8 days forward: retention deletes nothing it
would not have deleted without the step, also after a restart with the clock still stepped;
the step is logged, counted and shown. The clock moves through the gateway's documented test
hook (``MESHELECT_GATEWAY_TEST_CLOCK_FILE``, gateway/clock.py), nothing is mocked."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.core.messages import ACK_OK
from gateway.clock import CLOCK_FILE_ENV
from testkit.gateway import BatchSender, GatewayProcess, make_batch
from testkit.waiting import poll_until

DAY_MS = 86_400_000
WAIT_S = 30.0


def metric(gw: GatewayProcess, name: str) -> float:
    for line in httpx.get(gw.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no metric %s" % name)


def stored(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0])


def purges_after(gw: GatewayProcess, count: int) -> bool:
    """Wait until ``count`` more purges have run (each one had its chance to delete)."""
    start = metric(gw, "meshelect_gateway_purges_total")
    return (
        poll_until(lambda: metric(gw, "meshelect_gateway_purges_total") >= start + count, WAIT_S)
        is not None
    )


def deliver(sender: BatchSender, batch_id: int, term: int = 2) -> None:
    rows = [
        [sender.leader, 1, 10 * batch_id + k, 1_700_000_000_000, {"temp": k}] for k in range(10)
    ]
    assert sender.deliver(term, make_batch(batch_id, "m", sender.leader, rows))[1] == ACK_OK


@pytest.fixture
def clock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "clock-offset-ms"
    path.write_text("0")
    monkeypatch.setenv(CLOCK_FILE_ENV, str(path))  # the gateway process inherits it
    return path


def test_an_8_day_clock_step_deletes_nothing(tmp_path: Path, clock_file: Path) -> None:
    db = tmp_path / "gw.db"
    # Default retention (7 days); a leader silent for a minute would be an alert.
    gw = GatewayProcess(str(db), "--purge-every", "200ms", "--no-leader-after", "60s").start()
    try:
        assert "test clock hook on" in "".join(gw.output) or poll_until(
            lambda: "test clock hook on" in "".join(gw.output), 5
        )
        sender = BatchSender("m", "pi-1", gw.udp)
        for batch_id in range(1, 6):
            deliver(sender, batch_id)  # acknowledged: a real leader's members drop them now
        assert purges_after(gw, 2)
        clock_file.write_text(str(8 * DAY_MS))
        assert poll_until(lambda: metric(gw, "meshelect_gateway_clock_steps_total") == 1, WAIT_S)
        assert purges_after(gw, 3)
        assert stored(db) == 50
        # The step is not taken for 8 days of silence: no "no leader" alert.
        assert httpx.get(gw.url + "/api/alerts", timeout=5).json() == []
        health = httpx.get(gw.url + "/healthz", timeout=5).json()
        assert health["status"] == "ok"  # the gateway works; the step is a warning
        (problem,) = health["problems"]
        assert problem["what"] == "clock" and problem["step_ms"] > 8 * DAY_MS - 5000
        assert health["retention_held_back_ms"] > 8 * DAY_MS - 60_000
        assert metric(gw, "meshelect_gateway_retention_held_back_seconds") > 8 * 86_400 - 60
        assert "the wall clock stepped +6912" in "".join(gw.output)
        # Batches received after the step carry the stepped time; they stay too.
        for batch_id in range(6, 8):
            deliver(sender, batch_id)
        assert purges_after(gw, 2)
        assert stored(db) == 70
    finally:
        assert gw.stop() == 0
    # Restarted with the clock still 8 days ahead: downtime and step look the same to the
    # gateway, so it goes on from the reference its last purge saved.
    gw.start()
    try:
        assert purges_after(gw, 3)
        assert stored(db) == 70
    finally:
        assert gw.stop() == 0


def test_retention_still_deletes_what_it_observed_growing_old(
    tmp_path: Path, clock_file: Path
) -> None:
    """The positive control: with a 5 s retention, a row goes once the gateway has seen 5 s
    pass since it arrived, not earlier (although the wall clock jumped a day)."""
    db = tmp_path / "gw.db"
    gw = GatewayProcess(str(db), "--retention-raw", "5s", "--purge-every", "200ms").start()
    try:
        sender = BatchSender("m", "pi-1", gw.udp)
        delivered = time.monotonic()
        deliver(sender, 1)
        clock_file.write_text(str(DAY_MS))
        assert poll_until(lambda: metric(gw, "meshelect_gateway_clock_steps_total") == 1, WAIT_S)
        assert purges_after(gw, 2)
        left: Any = stored(db)
        # Gone only if the gateway could have observed 5 s since the batch arrived.
        assert left == 10 or time.monotonic() - delivered >= 5.0
        assert poll_until(lambda: stored(db) == 0, WAIT_S)
        assert time.monotonic() - delivered >= 5.0
        assert metric(gw, "meshelect_gateway_purged_readings_total") == 10
    finally:
        assert gw.stop() == 0


@pytest.mark.browser
def test_dashboard_shows_the_clock_step(
    tmp_path: Path, clock_file: Path, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    from tests.test_dashboard_browser import dashboard

    gw = GatewayProcess(str(tmp_path / "gw.db")).start()
    try:
        deliver(BatchSender("m", "pi-1", gw.udp), 1)
        with dashboard(gw.url) as (page, errors):
            expect(page.locator('section.mesh[data-mesh="m"]')).to_be_visible()
            banner = page.get_by_test_id("health")
            expect(banner).to_be_hidden()
            clock_file.write_text(str(8 * DAY_MS))
            expect(banner.locator('[data-what="clock"]')).to_contain_text(
                "wall clock stepped +691200 s"
            )
            page.screenshot(path=str(artifacts_dir / "dashboard-clock-step.png"))
            assert errors == []
    finally:
        assert gw.stop() == 0
