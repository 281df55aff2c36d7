"""Energy accounting and sleepy members without a network: the core's arithmetic and the
sleepy cycle on CPython and MicroPython (the same lines from tests/mpy/energy_check.py), the
settings' checks on every runtime, and the gateway's rules (a sleeping node is not silent, one
that missed its wakes is; rates and battery life from the energy report)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.config import ConfigError, from_dict
from agent.core.sleepy import SleepCycle
from gateway import energy
from gateway.batch import parse_batch
from gateway.tracker import ALERT_NODE_SILENT, Tracker, TrackerConfig
from testkit.mpy import run_micropython
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool

SCRIPT = REPO_ROOT / "tests" / "mpy" / "energy_check.py"


def run_on_cpython() -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": "%s:%s" % (REPO_ROOT, REPO_ROOT / "firmware" / "lib")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_arithmetic_and_the_sleepy_cycle_on_cpython() -> None:
    lines = dict(line.split(": ", 1) for line in run_on_cpython().splitlines() if ": " in line)
    # An hour as a member in modem sleep (20 mA) with 4 ms sent at +180 mA and 1 ms received
    # at +80 mA: 72e9 + 0.8e6 µA ms; then half an hour leading.
    assert lines["member charge"] == "72000800000"
    assert lines["report"] == (
        "mAh_cap=1500, ms_leader=1800000, ms_member=3600000, nAh_leader=10000750, "
        "nAh_member=20000222"
    )
    # 2 s awake at 95 mA, one 64-byte frame (385 µs at +85 mA), 58 s asleep at 10 µA.
    assert lines["sleepy charge"] == str(2000 * 95000 + 385 * 85000 // 1000 + 58000 * 10)
    assert lines["held after wake"] == "2" and lines["unconfirmed"] == "[2, 3]"
    assert lines["next seq"] == "4" and lines["counter"] == "41" and lines["slept"] == "3000"
    assert lines["leaders"] == "['n2']" and lines["sleepy score"] == "-1"
    assert lines["sleepy flag heard"] == "32"


@pytest.mark.micropython
def test_micropython_prints_the_same_lines() -> None:
    rc, out = run_micropython(SCRIPT, path=[REPO_ROOT / "firmware" / "lib"])
    assert rc == 0, out
    assert out == run_on_cpython()


def test_settings_are_checked_alike_on_every_runtime() -> None:
    with pytest.raises(ValueError, match=r"sleep\.interval_ms: must be an integer within"):
        SleepCycle({"interval_ms": 10})
    with pytest.raises(ConfigError, match=r"sleep\.listen_ms"):
        from_dict({"sleep": {"listen_ms": 0}})
    with pytest.raises(ConfigError, match=r"energy\.capacity_mah"):
        from_dict({"energy": {"capacity_mah": 0}})
    cfg = from_dict({"sleep": {"interval_ms": 60000}, "energy": {"report_ms": 5000}})
    assert cfg.eligible is False and cfg.sleep == {"interval_ms": 60000}
    board = {"node_id": "b1", "sleep": {"interval_ms": 60000}, "wifi": {"power_save": "none"}}
    firmware_tool.device_config(board)  # deploy takes it; the board's check at boot:
    assert firmware_tool._firmware_config_module().check(board)["eligible"] is False
    for bad, why in (
        ({"sleep": {"confirm_ms": 1}}, "sleep.confirm_ms"),
        ({"energy": {"deep_ua": -1}}, "energy.deep_ua"),
        ({"wifi": {"power_save": "max"}}, "wifi.power_save"),
    ):
        with pytest.raises(firmware_tool.ToolError, match=why):
            firmware_tool.device_config({"node_id": "b1", **bad})


def batch(members: list[list[int | str]], readings: list[list[object]] | None = None) -> object:
    body = {"id": 1, "readings": readings or [], "members": members}
    return parse_batch(body, "m", "n1")


def test_a_sleeping_node_is_silent_only_when_it_missed_its_wakes() -> None:
    tracker = Tracker(TrackerConfig(silent_ms=3000, no_leader_ms=10**9))
    leader = ["n1", 900, 900, 900, 1, 0]
    sleepy = ["s1", -1, 1000, 1000, 32, 0, 10000]  # wakes every 10 s
    awake = ["n2", 800, 800, 800, 0, 0]
    tracker.observe(1, batch([leader, sleepy, awake]), True, 0)
    for now in range(1000, 22000, 1000):
        # The leader goes on listing the sleeping node, with its age; n2 has gone quiet.
        changes = tracker.observe(1, batch([leader, [*sleepy[:5], now, 10000]]), True, now)
        changes += tracker.tick(now)
        raised = {c.data["node"] for c in changes if c.kind == "raise"}
        assert "s1" not in raised, now  # asleep, and within two wakes and the slack
        if now == 4000:
            assert "n2" in raised  # an awake node: silent after 3 s
    view = tracker.meshes["m"].as_dict()["members"]
    s1 = next(m for m in view if m["node"] == "s1")
    assert s1["sleep_ms"] == 10000 and s1["next_wake_ms"] == 10000
    # It never wakes again: 2 x 10 s + 3 s after it was last heard, it is silent.
    changes = tracker.tick(23001)
    alerts = [c for c in changes if c.kind == "raise" and c.data["node"] == "s1"]
    assert alerts and alerts[0].data["kind"] == ALERT_NODE_SILENT
    assert "missed its wakes" in alerts[0].data["message"]
    # A heartbeat of it that reaches a new leader before its readings keeps its interval.
    tracker.observe(2, batch([["n2", 800, 800, 800, 1, 0], [*sleepy[:5], 0]]), True, 24000)
    assert tracker.meshes["m"].nodes["s1"].sleep_ms == 10000


def test_energy_report_gives_rates_and_battery_life() -> None:
    tracker = Tracker()
    report = {"nAh_leader": 500000, "ms_leader": 10000, "nAh_member": 250000, "ms_member": 10000}
    report["mAh_cap"] = 2000
    older = dict(report, nAh_leader=1)
    readings = [["n1", 5, 2, 0, report], ["n1", 5, 1, 0, older], ["n1", 5, 3, 0, {"t": 1}]]
    tracker.observe(1, batch([["n1", 900, 500, 900, 1, 0]], readings), True, 0)
    view = tracker.meshes["m"].as_dict()["members"][0]["energy"]
    # 500 µAh in 10 s is 180 mA; 250 µAh, 90 mA; overall 135 mA; half of 2000 mAh: 7.4 h.
    assert view["roles"]["leader"]["mA"] == 180.0 and view["roles"]["member"]["mA"] == 90.0
    assert view["mA"] == 135.0 and view["life_h"] == 7.4
    assert energy.view(report, 500, True)["life_h"] is None  # on mains
    assert energy.view({"mAh_cap": 2000}, 500, False) is None  # nothing spent yet
