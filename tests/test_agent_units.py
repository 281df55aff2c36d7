"""Fast tests of the Pi agent's parts that need no network: config, sensors, link quality,
logs, status, boot counter."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import runtime, status
from agent.config import ConfigError, from_dict, load_config
from agent.core.node import Config
from agent.linkquality import LinkQuality
from agent.logs import EventLog
from agent.sensors import (
    CpuTemperature,
    LoadAverage,
    PowerSupply,
    SensorHub,
    Simulated,
    WirelessSignal,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "agent.toml"

# ------------------------------------------------------------------------------------ config


def test_defaults_are_sane() -> None:
    cfg = from_dict({})
    assert cfg.transport == "udp"
    assert cfg.heartbeat_ms == 250
    assert cfg.udp.group == "239.255.77.77"
    assert cfg.udp.port == 47470
    assert cfg.udp.ttl == 1
    assert cfg.gateway is None  # discovered by mDNS
    assert cfg.mqtt.broker is None
    assert [s.type for s in cfg.sensors] == ["cpu_temp", "load", "battery", "wireless"]
    assert 1 <= len(cfg.node_id.encode()) <= 16


def test_own_multicast_comes_back_only_when_agents_may_share_the_host() -> None:
    assert from_dict({}).udp.loop is False  # one agent per host: unicast on the group port
    assert from_dict({"udp": {"unicast_port": 0}}).udp.loop is True  # the loopback demo
    assert from_dict({"udp": {"unicast_port": 0, "loop": False}}).udp.loop is False
    assert from_dict({"udp": {"loop": True}}).udp.loop is True


def test_example_config_loads() -> None:
    cfg = load_config(str(EXAMPLE))
    assert cfg.mesh
    assert runtime.core_config(cfg).heartbeat_ms == cfg.heartbeat_ms


def test_election_settings_default_to_the_cores() -> None:
    cfg = from_dict({"election": {"quorum": 3}})
    core = Config()
    assert (cfg.heartbeat_ms, cfg.margin, cfg.quorum) == (core.heartbeat_ms, core.margin, 3)
    assert (cfg.suspect_intervals, cfg.listen_intervals) == (3, 2)
    assert (cfg.weight_battery, cfg.weight_link, cfg.low_battery) == (600, 400, 200)
    assert cfg.max_peers == 256  # the Pi's own default: it hears bigger meshes than a board
    assert (cfg.probes, cfg.probe_ms) == (0, 31)  # no probes; max(hb / 8, 5) at hb 250
    probing = runtime.core_config(from_dict({"heartbeat_ms": 50, "election": {"probes": 3}}))
    assert (probing.probes, probing.probe_ms) == (3, 6)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"heartbeat_ms": "fast"}, "heartbeat_ms"),
        ({"heartbeat_ms": True}, "heartbeat_ms"),
        ({"transport": "carrier-pigeon"}, "transport"),
        ({"udp": {"port": "47470"}}, "udp.port"),
        ({"udp": {"group": "10.0.0.1"}}, "udp.group"),
        ({"udp": "x"}, "udp"),
        ({"mqtt": {"broker": "host:notaport"}}, "mqtt.broker"),
        ({"score": {"battery": 0, "link": 0}}, "score.battery"),
        # The core's ranges (agent/core/node.py), named as in the file:
        ({"heartbeat_ms": 5}, "heartbeat_ms"),
        ({"election": {"suspect_intervals": 1}}, "election.suspect_intervals"),
        ({"election": {"max_peers": 5000}}, "election.max_peers"),
        ({"election": {"probes": 11}}, "election.probes"),
        ({"election": {"probe_ms": 0}}, "election.probe_ms"),
        ({"election": {"typo": 1}}, "election.typo"),
        ({"score": {"low_battery": -1}}, "score.low_battery"),
        ({"mesh": "m" * 33}, "mesh"),
        ({"sensors": [{"type": "geiger"}]}, "sensors[0].type"),
        (
            {"sensors": [{"type": "simulated", "metrics": {"t": {"base": 1.5}}}]},
            "sensors[0].metrics.t.base",
        ),
        ({"node_id": "a-very-long-node-identifier"}, "node_id"),
        ({"mesh_key": "not hex"}, "mesh_key"),
        ({"typo_setting": 1}, "typo_setting"),
    ],
)
def test_bad_config_names_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert err.value.key == key
    assert str(err.value).startswith(key + ":")


def test_broken_toml_and_wrong_type_exit_2_without_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("heartbeat_ms = = 3\n")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('heartbeat_ms = "250"\nstate_dir = "%s"\n' % tmp_path)
    for path, needle in ((broken, "not valid TOML"), (wrong, "heartbeat_ms")):
        result = subprocess.run(
            [sys.executable, "-m", "agent.runtime", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 2
        assert needle in result.stderr
        assert "Traceback" not in result.stderr


def test_boot_counter_grows_and_persists(tmp_path: Path) -> None:
    assert runtime.next_boot(str(tmp_path), 0) == 1  # 0: a clock that was never set
    assert runtime.next_boot(str(tmp_path), 0) == 2
    assert (tmp_path / "boot").read_text().strip() == "2"
    # With a valid clock the boot is at least the seconds since 2024, and grows beyond it.
    now = 1_790_000_000.5
    assert runtime.next_boot(str(tmp_path), now) == 1_790_000_000 - 1_704_067_200
    assert runtime.next_boot(str(tmp_path), now) == 1_790_000_000 - 1_704_067_200 + 1
    # A wiped state dir: the clock still puts the new boot above every earlier one.
    (tmp_path / "boot").unlink()
    assert runtime.next_boot(str(tmp_path), now + 5) == 1_790_000_005 - 1_704_067_200
    (tmp_path / "boot").write_text("garbage")
    with pytest.raises(ConfigError):
        runtime.next_boot(str(tmp_path))


# ----------------------------------------------------------------------------------- sensors


def test_sysfs_and_procfs_sources(tmp_path: Path) -> None:
    (tmp_path / "temp").write_text("48312\n")
    (tmp_path / "loadavg").write_text("0.52 0.40 0.30 1/123 4567\n")
    ps = tmp_path / "power_supply"
    (ps / "BAT0").mkdir(parents=True)
    (ps / "BAT0" / "type").write_text("Battery\n")
    (ps / "BAT0" / "capacity").write_text("73\n")
    (ps / "AC").mkdir()
    (ps / "AC" / "type").write_text("Mains\n")
    (ps / "AC" / "online").write_text("0\n")
    (tmp_path / "wireless").write_text(
        "Inter-| sta-|   Quality        |   Discarded packets\n"
        " face | tus | link level noise |  nwid  crypt   frag\n"
        " wlan0: 0000   56.  -54.  -256        0      0      0\n"
    )
    assert CpuTemperature(str(tmp_path / "temp")).read(0) == {"cpu_temp": 48312}
    assert LoadAverage(str(tmp_path / "loadavg")).read(0) == {"load1": 520}
    supply = PowerSupply(str(ps))
    assert supply.power(0) == (730, False)
    assert WirelessSignal(str(tmp_path / "wireless")).link() == 800
    hub = SensorHub([CpuTemperature(str(tmp_path / "temp")), supply])
    assert hub.read(0) == {"cpu_temp": 48312, "battery": 730}
    assert hub.power(0) == (730, False)


def test_missing_hardware_reads_nothing(tmp_path: Path) -> None:
    assert CpuTemperature(str(tmp_path / "none")).read(0) == {}
    assert PowerSupply(str(tmp_path / "none")).power(0) == (None, None)
    assert WirelessSignal(str(tmp_path / "none")).link() is None
    # No battery at all: a Pi on the wall.
    assert SensorHub([]).power(0) == (1000, True)


def test_simulated_battery_drains_and_curves_are_ints() -> None:
    sim = Simulated({"temp": (21000, 2000, 60000)}, seed=3, battery_start=900, drain_per_min=60)
    first = sim.read(0)
    later = sim.read(60000)
    assert first["battery"] == 900
    assert later["battery"] == 840
    assert all(isinstance(v, int) for v in later.values())
    assert 18000 <= later["temp"] <= 24000
    again = Simulated({"temp": (21000, 2000, 60000)}, seed=3, battery_start=900)
    assert again.read(0)["temp"] == first["temp"]  # deterministic per seed


def test_simulated_battery_drains_faster_while_leading() -> None:
    sim = Simulated(battery_start=900, drain_per_min=60, leader_drain_per_min=120)
    sim.battery(0)
    sim.set_leading(True)
    assert sim.battery(30000) == 810  # 30 s at 180 per minute
    sim.set_leading(False)
    assert sim.battery(60000) == 780  # then 30 s at 60 per minute


def test_simulated_battery_recharges_when_asked() -> None:
    sim = Simulated(battery_start=300, drain_per_min=600, recharge_below=100)
    sim.battery(0)
    assert sim.battery(30000) == 1000


# ------------------------------------------------------------------------------ link quality


def test_link_quality_from_loss_rtt_and_wifi() -> None:
    lq = LinkQuality(heartbeat_ms=100)
    assert lq.link(0) == 1000  # nothing known: assume good
    for t in range(0, 2000, 100):
        lq.heard("a", t)
    assert lq.link(2000) >= 950
    lossy = LinkQuality(heartbeat_ms=100)
    for t in range(0, 2000, 200):  # every other heartbeat lost
        lossy.heard("a", t)
    assert 400 <= lossy.link(2000) <= 600
    lq.rtt_sample(1000)
    assert lq.link(2000) <= 550
    lq.wifi = 300
    assert lq.link(2000) <= 300


def test_link_quality_forgets_departed_peers() -> None:
    lq = LinkQuality(heartbeat_ms=100)
    for t in range(0, 1000, 100):
        lq.heard("gone", t)
    assert lq.loss_per_mille(5000) is None


# -------------------------------------------------------------------------------------- logs


def test_logs_text_and_json() -> None:
    out = io.StringIO()
    log = EventLog("n1", "text", out)
    log.warning("frame_dropped", reason="bad_tag", source="10.0.0.1:5")
    line = out.getvalue().strip()
    assert " n1 warning frame_dropped reason=bad_tag source=10.0.0.1:5" in line
    out = io.StringIO()
    log = EventLog("n1", "json", out)
    log.info("role_changed", role="leader", term=3, name="x")
    record = json.loads(out.getvalue())
    assert record["event"] == "role_changed"
    assert record["term"] == 3
    assert record["name"] == "x"
    assert log.counts == {"role_changed": 1}


def test_debug_lines_are_counted_but_not_written() -> None:
    out = io.StringIO()
    log = EventLog("n1", "text", out, min_level="info")
    log.debug("noise")
    assert out.getvalue() == ""
    assert log.counts["noise"] == 1


# ------------------------------------------------------------------------------------ status


def test_status_file_round_trip_and_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "node": "n1",
        "mesh": "m",
        "role": "leader",
        "term": 4,
        "leader": "n1",
        "boot": 2,
        "score": 900,
        "updated": 0,
        "buffer": {"depth": 3, "taken": 10, "dropped": 0},
        "peers": [
            {
                "id": "n2",
                "score": 800,
                "battery": 700,
                "link": 990,
                "term": 4,
                "flags": 0,
                "age_ms": 120,
            },
            {
                "id": "n3",
                "score": 950,
                "battery": 990,
                "link": 990,
                "term": 3,
                "flags": 1,
                "age_ms": 8400,
            },
        ],
        "stale_peers": ["n3"],
        "drops": {"bad_tag": 2},
    }
    status.write_status(str(tmp_path), data)
    assert status.read_status(str(tmp_path)) == data
    assert status.cli(["--state-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "role leader" in shown
    rows = {line.split()[0]: line for line in shown.splitlines() if line[:2] in ("n2", "n3")}
    assert rows["n2"].endswith(" -")
    assert rows["n3"].endswith(" stale (was leader)")  # a frozen leader is no fresh leader
    assert "bad_tag=2" in shown
    assert "STALE" in shown
    assert status.cli(["--state-dir", str(tmp_path / "nothing")]) == 1


def test_status_module_runs_as_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 1
    assert "is the agent running" in result.stderr


def test_udp_interface_by_address_or_name() -> None:
    from agent.transport.udp import interface_address

    assert interface_address("127.0.0.1", "239.255.77.77") == "127.0.0.1"
    assert interface_address("lo", "239.255.77.77") == "127.0.0.1"
    with pytest.raises(OSError, match="no IPv4 address"):
        interface_address("no-such-if0", "239.255.77.77")


# ------------------------------------------------------------------------------------- --help


@pytest.mark.parametrize("module", ["agent.runtime", "agent.demo", "tools.bench.idle"])
def test_every_option_has_a_help_text_with_its_default(module: str) -> None:
    import argparse
    import importlib

    parser = importlib.import_module(module).build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.option_strings
        assert "default" in action.help, action.option_strings


# ----------------------------------------------------------------------------------- runtime


def test_a_frame_wakes_the_loop_only_if_it_moved_a_deadline_sooner(tmp_path: Path) -> None:
    cfg = from_dict({"state_dir": str(tmp_path), "discovery": {"enabled": False}})
    agent = runtime.Agent(cfg, EventLog("n1", "json", stream=io.StringIO()), boot=1)
    app = agent.app
    try:
        app.node.wakeup = 2000
        app._data_at = 1500  # the data path's next run
        assert app.wakeup == 1500
        agent._sleep_deadline = 1500  # what the loop sleeps until
        agent._wake_if_sooner()
        assert not agent._wake.is_set()  # a heartbeat that changed nothing it waits for
        app.node.wakeup = 1200
        agent._wake_if_sooner()
        assert agent._wake.is_set()
        agent._wake.clear()
        app.node.wakeup = 2000
        app._data_at = 0  # a new leader: resend now
        agent._wake_if_sooner()
        assert agent._wake.is_set()
        agent._wake.clear()
        app._data_at = 1500
        agent._sleep_deadline = None  # not asleep: always wake
        agent._wake_if_sooner()
        assert agent._wake.is_set()
    finally:
        agent.journal.close()
