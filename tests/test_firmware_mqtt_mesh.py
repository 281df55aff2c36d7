"""The firmware on the MQTT transport: two firmware nodes (MicroPython unix port, built .mpy)
and a Pi agent share one mesh through a real Mosquitto, with the real gateway ingesting over
MQTT. The firmware leader is elected, readings of both runtimes are stored; kill -9 of the
leader publishes its last will and the next best node (firmware) takes over."""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from agent.core import topics
from testkit.broker import Mosquitto
from testkit.tools import require_tool
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool

pytestmark = [pytest.mark.micropython, pytest.mark.slow]

MESH = "mq"
KEY = b"mqtt-mesh-key".hex()
WAIT_S = 30.0
BATTERY = {"fw-1": 950, "fw-2": 800, "pi-1": 600}


wait_for = functools.partial(poll_until, timeout=WAIT_S)


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.files: list[Any] = []

    def start(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        log = (self.tmp / (name + ".log")).open("w")
        self.files.append(log)
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def close(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.kill(name)
        for f in self.files:
            f.close()

    def logs(self) -> str:
        return "\n".join(
            "--- %s\n%s" % (p.name, "\n".join(p.read_text(errors="replace").splitlines()[-10:]))
            for p in sorted(self.tmp.glob("*.log"))
        )


def test_firmware_and_pi_agent_share_an_mqtt_mesh(mosquitto: Mosquitto, tmp_path: Path) -> None:
    exe = require_tool("micropython")
    require_tool("mpy-cross")
    build = tmp_path / "build"
    firmware_tool.build(build)
    procs = Processes(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    broker = "%s:%d" % (mosquitto.host, mosquitto.port)
    db = tmp_path / "gw.db"
    wills: queue.Queue[tuple[str, bytes]] = queue.Queue()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="will-watcher")
    watcher.on_message = lambda _c, _u, m: wills.put((m.topic, m.payload))
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe(topics.topic(topics.DEFAULT_PREFIX, MESH, topics.STATUS, "#"), qos=1)
    watcher.loop_start()
    try:
        procs.start(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway",
                "--db",
                str(db),
                "--no-udp",
                "--no-mdns",
                "--http-port",
                "0",
                "--mqtt-host",
                mosquitto.host,
                "--mqtt-port",
                str(mosquitto.port),
                "--mesh-key",
                "%s=%s" % (MESH, KEY),
                "--log-level",
                "warning",
            ],
            REPO_ROOT,
            env,
        )
        statuses: dict[str, Path] = {}
        for name in ("fw-1", "fw-2"):
            folder = tmp_path / name
            folder.mkdir()
            for entry in build.iterdir():
                os.symlink(entry, folder / entry.name)
            config = firmware_tool.device_config(
                {
                    "node_id": name,
                    "mesh": MESH,
                    "mesh_key": KEY,
                    "transport": "mqtt",
                    "mqtt": {"broker": broker, "keepalive_s": 2},
                    "status_ms": 100,
                    "print_status": False,
                    "status_file": str(folder / "status.json"),
                    "discovery": {"enabled": False},
                    "data": {"sample_ms": 200},
                    "hw": {"kind": "unix", "battery": BATTERY[name]},
                }
            )
            (folder / "config.json").write_text(json.dumps(config))
            statuses[name] = folder / "status.json"
            procs.start(name, [exe, "main.py"], folder, dict(os.environ, MICROPYPATH=".frozen:."))
        state = tmp_path / "pi-1"
        state.mkdir()
        (tmp_path / "pi-1.toml").write_text(
            "\n".join(
                [
                    'node_id = "pi-1"',
                    'mesh = "%s"' % MESH,
                    'mesh_key = "%s"' % KEY,
                    'transport = "mqtt"',
                    'state_dir = "%s"' % state,
                    "status_ms = 100",
                    'log_format = "json"',
                    "[mqtt]",
                    'broker = "%s"' % broker,
                    "[discovery]",
                    "enabled = false",
                    "[data]",
                    "sample_ms = 200",
                    "[[sensors]]",
                    'type = "simulated"',
                    "battery_start = %d" % BATTERY["pi-1"],
                ]
            )
            + "\n"
        )
        statuses["pi-1"] = state / "status.json"
        procs.start(
            "pi-1",
            [sys.executable, "-m", "agent.runtime", "--config", str(tmp_path / "pi-1.toml")],
            REPO_ROOT,
            env,
        )

        def status(name: str) -> dict[str, Any]:
            try:
                data = json.loads(statuses[name].read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}

        def agreed(names: list[str]) -> str | None:
            leaders = {status(n).get("leader") for n in names}
            return leaders.pop() if len(leaders) == 1 else None

        def stored() -> dict[str, int]:
            if not db.exists():
                return {}
            con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
            try:
                rows = con.execute("SELECT node, COUNT(*) FROM readings GROUP BY node").fetchall()
            except sqlite3.Error:
                return {}
            finally:
                con.close()
            return dict(rows)

        assert wait_for(lambda: agreed(["fw-1", "fw-2", "pi-1"]) == "fw-1"), procs.logs()
        assert wait_for(lambda: {"fw-1", "fw-2", "pi-1"} <= set(stored())), procs.logs()

        # A broker restart pauses everyone's election clock: no suspicion, no new term.
        names = ["fw-1", "fw-2", "pi-1"]
        before = {n: (status(n)["term"], status(n)["stats"]["terms_started"]) for n in names}
        mosquitto.restart()
        assert wait_for(
            lambda: all(status(n)["transport"]["connects"] >= 2 for n in ("fw-1", "fw-2"))
        ), procs.logs()
        assert wait_for(
            lambda: (
                not any(status(n).get("clock_paused") for n in names) and agreed(names) == "fw-1"
            )
        ), procs.logs()
        watcher.reconnect()
        time.sleep(1.0)  # a few heartbeat rounds after the return: would show a disruption
        after = {n: (status(n)["term"], status(n)["stats"]["terms_started"]) for n in names}
        assert after == before, (before, after, procs.logs())

        procs.kill("fw-1")
        assert wait_for(lambda: agreed(["fw-2", "pi-1"]) == "fw-2"), procs.logs()
        # The broker published fw-1's last will.
        will = (topics.topic(topics.DEFAULT_PREFIX, MESH, topics.STATUS, "fw-1"), topics.OFFLINE)
        deadline = time.monotonic() + WAIT_S
        seen = []
        while time.monotonic() < deadline:
            try:
                seen.append(wills.get(timeout=0.1))
            except queue.Empty:
                continue
            if seen[-1] == will:
                break
        assert will in seen, seen
        # The new firmware leader's batches reach the gateway too.
        before = stored().get("pi-1", 0)
        assert wait_for(lambda: stored().get("pi-1", 0) > before), procs.logs()
        assert status("fw-2")["errors"] == 0
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        procs.close()
