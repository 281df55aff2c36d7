"""`meshelect demo`: a gateway and a mesh of agents on this machine, until Ctrl-C.

Every part is a separate process, as on real hardware: the gateway (`python -m gateway`) and
N agents talking UDP multicast and mDNS on loopback (or MQTT with `--mqtt HOST:PORT`). The
agents' simulated batteries drain, faster while leading, so leadership visibly moves on the
dashboard. Everything lives in a temporary folder that is removed at the end.

The demo is there to be broken: a node that dies (kill -9 it) is started again after a few
seconds, as systemd would, and keys in the terminal and buttons on the dashboard kill the
leader, stop it gracefully, drain its battery or partition the mesh (agent/demoactions.py,
agent/democontrol.py). However the demo ends (Ctrl-C, SIGTERM, SIGHUP, its output closed, an
error, kill -9), its children end with it (agent/children.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from types import FrameType
from typing import Any

from agent.children import Child, Supervisor
from agent.config import ConfigError, parse_host_port
from agent.demoactions import Actions, DemoNode
from agent.democontrol import KEY_HELP, Control

GATEWAY_LINE = re.compile(r"meshelect gateway: (\S+) udp (?:(\S+):(\d+)|off)")
GATEWAY_START_S = 30.0
STOP_GRACE_S = 5.0
LOOP_S = 0.2  # how often the loop looks at its children when nothing else happens
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StartError(Exception):
    """A part of the demo did not start; the message says which and why."""


def agent_toml(
    index: int,
    mesh: str,
    state_dir: str,
    heartbeat_ms: int,
    gateway: tuple[str, int] | None,
    mqtt: tuple[str, int] | None,
    battery: int,
    drain: int,
    leader_drain: int,
    mesh_port: int = 47470,
) -> str:
    lines = [
        'node_id = "node-%d"' % index,
        'mesh = "%s"' % mesh,
        'transport = "%s"' % ("mqtt" if mqtt else "udp"),
        "heartbeat_ms = %d" % heartbeat_ms,
        'state_dir = "%s"' % state_dir,
        "[udp]",
        'interface = "127.0.0.1"',
        "port = %d  # the demo's own: two demos on one machine never meet" % mesh_port,
        "unicast_port = 0  # several agents on one host",
        "[discovery]",
        'interface = "127.0.0.1"',
        "[faults]",
        'file = "%s"  # the partition action writes it' % os.path.join(state_dir, "faults.json"),
    ]
    if gateway:
        lines += ["[gateway]", 'address = "%s:%d"' % gateway]
    if mqtt:
        lines += ["[mqtt]", 'broker = "%s:%d"' % mqtt]
    lines += [
        "[[sensors]]",
        'type = "simulated"',
        "seed = %d" % index,
        "battery_start = %d" % battery,
        "drain_per_min = %d" % drain,
        "leader_drain_per_min = %d" % leader_drain,
        "recharge_below = 150",
        'battery_set_file = "%s"  # the drain action writes it'
        % os.path.join(state_dir, "battery-set"),
        "[sensors.metrics.temperature]",
        "base = %d" % (20000 + 500 * index),
        "amplitude = 1500",
        "period_ms = 90000",
        "[sensors.metrics.humidity]",
        "base = 55000",
        "amplitude = 8000",
        "period_ms = 150000",
        "[[sensors]]",
        'type = "load"',
    ]
    return "\n".join(lines) + "\n"


class Output:
    """The demo's lines to its terminal. A closed stdout or stderr (the reader went away) must
    not stop the demo from stopping its children: from then on that stream goes nowhere."""

    def say(self, text: str, error: bool = False) -> None:
        stream = sys.stderr if error else sys.stdout
        try:
            print("meshelect demo: %s" % text, file=stream, flush=True)
        except (BrokenPipeError, ValueError, OSError):
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)


class Demo:
    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out
        self.dir = tempfile.mkdtemp(prefix="meshelect-demo-")
        self.supervisor = Supervisor(args.restart_after, out.say)
        self.selector = selectors.DefaultSelector()
        self.nodes: list[DemoNode] = []
        self.actions = Actions(args.mesh, self.nodes)
        self.control = Control(self.actions, self.selector, out.say)
        self.stop_reason: str | None = None
        self.env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.env["PYTHONPATH"] = root + (
            os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else ""
        )
        self.mesh_port = args.mesh_port or _free_udp_port()

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_reason = signal.Signals(signum).name

    # -- starting ----------------------------------------------------------------------------

    def start_gateway(self) -> tuple[str, tuple[str, int] | None]:
        control = os.path.join(self.dir, "control.sock")
        self.control.listen(control)
        argv = [
            sys.executable, "-m", "gateway",
            "--db", os.path.join(self.dir, "gateway.db"),
            "--http-host", "127.0.0.1",
            "--http-port", str(self.args.http_port),
            "--mdns-interface", "127.0.0.1",
            "--demo-control", control,
        ]  # fmt: skip
        if self.args.mqtt:
            host, port = self.args.mqtt
            argv += ["--mqtt-host", host, "--mqtt-port", str(port), "--no-udp"]
            if not self.args.homeassistant:
                argv.append("--no-homeassistant")
        else:
            argv += ["--udp-host", "127.0.0.1", "--udp-port", "0"]
        log = os.path.join(self.dir, "gateway.log")
        child = Child("gateway", argv, log, self.env, last=True)
        self.supervisor.start(child)
        match = self._wait_for_line(child, GATEWAY_LINE, GATEWAY_START_S)
        url = match.group(1)
        udp = (match.group(2), int(match.group(3))) if match.group(2) else None
        # Started again later, it must come back where the agents and the browser expect it.
        port = url.rstrip("/").rsplit(":", 1)[1]
        child.argv[child.argv.index("--http-port") + 1] = port
        if udp is not None:
            child.argv[child.argv.index("--udp-port") + 1] = str(udp[1])
        return url, udp

    def _wait_for_line(
        self, child: Child, pattern: re.Pattern[str], timeout: float
    ) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.stop_reason is None:
            with open(child.log_path, errors="replace") as f:
                match = pattern.search(f.read())
            if match:
                return match
            if not child.running():
                break
            time.sleep(0.05)
        if self.stop_reason is not None:
            raise StartError("stopped while the %s was starting" % child.name)
        with open(child.log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-8:])
        raise StartError(
            "the %s did not start (is `meshelect[gateway]` installed?); its log ends:\n%s"
            % (child.name, tail)
        )

    def start_agents(self, gateway: tuple[str, int] | None) -> None:
        n = self.args.agents
        for index in range(1, n + 1):
            state = os.path.join(self.dir, "node-%d" % index)
            os.makedirs(state, exist_ok=True)
            path = os.path.join(state, "agent.toml")
            # Spread the batteries so the first leader is clear, then let them drain.
            battery = 1000 - (index - 1) * 100
            with open(path, "w") as f:
                f.write(
                    agent_toml(
                        index,
                        self.args.mesh,
                        state,
                        self.args.heartbeat_ms,
                        None if self.args.mqtt else gateway,
                        self.args.mqtt,
                        battery,
                        self.args.drain_per_min,
                        self.args.leader_drain_per_min,
                        self.mesh_port,
                    )
                )
            argv = [sys.executable, "-m", "agent.runtime", "--config", path]
            log = os.path.join(self.dir, "node-%d.log" % index)
            child = self.supervisor.start(Child("node-%d" % index, argv, log, self.env))
            self.nodes.append(
                DemoNode(
                    child,
                    os.path.join(state, "status.json"),
                    os.path.join(state, "faults.json"),
                    os.path.join(state, "battery-set"),
                )
            )

    def start_firmware_nodes(self, gateway: tuple[str, int] | None) -> None:
        """ESP32-style nodes: the real firmware, compiled to .mpy, on the MicroPython unix port."""
        from pathlib import Path

        from tools import firmware as firmware_tool

        exe = shutil.which("micropython") or os.path.join(
            os.path.dirname(sys.executable), "micropython"
        )
        if not os.path.exists(exe):
            raise StartError("--firmware needs the MicroPython unix port (micropython command)")
        build = Path(self.dir) / "firmware-build"
        try:
            firmware_tool.build(build)
        except firmware_tool.ToolError as exc:
            raise StartError("cannot build the firmware: %s" % exc) from None
        for index in range(1, self.args.firmware + 1):
            folder = Path(self.dir) / ("esp-%d" % index)
            folder.mkdir()
            for entry in build.iterdir():
                os.symlink(entry, folder / entry.name)
            data: dict[str, Any] = {
                "node_id": "esp-%d" % index,
                "mesh": self.args.mesh,
                "heartbeat_ms": self.args.heartbeat_ms,
                "print_status": False,
                "status_file": str(folder / "status.json"),
                "boot_file": str(folder / "boot_count"),
                "udp": {"interface": "127.0.0.1", "unicast_port": 0, "port": self.mesh_port},
                "hw": {
                    "kind": "unix",
                    "battery": 800 - 100 * index,
                    "link": 900,
                    "drain_per_min": self.args.drain_per_min,
                },
            }
            if self.args.mqtt:
                data["transport"] = "mqtt"
                data["mqtt"] = {"broker": "%s:%d" % self.args.mqtt}
            elif gateway is not None:
                data["gateway"] = {"address": "%s:%d" % gateway}
            config = firmware_tool.device_config(data)
            (folder / "config.json").write_text(json.dumps(config))
            env = {**self.env, "MICROPYPATH": ".frozen:."}
            log = str(folder / "out.log")
            child = Child("esp-%d" % index, [exe, "main.py"], log, env, cwd=str(folder))
            self.supervisor.start(child)
            self.nodes.append(DemoNode(child, str(folder / "status.json")))

    # -- running -----------------------------------------------------------------------------

    def run(self, duration: float | None) -> None:
        """Until a stop signal or the end of ``duration``: restart dead nodes, serve the keys
        and the control socket."""
        deadline = time.monotonic() + duration if duration else None
        while self.stop_reason is None:
            if deadline is not None and time.monotonic() >= deadline:
                self.stop_reason = "--duration over"
                break
            for key, _ in self.selector.select(LOOP_S):
                key.data(key.fileobj)
            self.supervisor.check()

    def stop(self) -> None:
        """Children first (agents before the gateway), then the folder, if nothing lives on."""
        self.control.close()
        alive = self.supervisor.stop_all(STOP_GRACE_S)
        self.selector.close()
        if alive:
            self.out.say("kept %s: %s did not end" % (self.dir, ", ".join(alive)), error=True)
            return
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshelect demo", description=__doc__.split("\n")[0])
    p.add_argument(
        "--agents",
        metavar="N",
        type=int,
        default=4,
        help="Pi-style agent processes, 1..32 (default: %(default)s)",
    )
    p.add_argument(
        "--mesh", default="demo", metavar="NAME", help="mesh name (default: %(default)s)"
    )
    p.add_argument(
        "--mqtt",
        metavar="HOST:PORT",
        help="run over this MQTT broker (default: UDP multicast and mDNS on loopback)",
    )
    p.add_argument(
        "--homeassistant",
        action="store_true",
        help="with --mqtt: announce the demo's mesh to Home Assistant on that broker (default: "
        "off, since its retained entities would outlive the demo)",
    )
    p.add_argument(
        "--http-port",
        metavar="PORT",
        type=int,
        default=8470,
        help="dashboard port, 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--mesh-port",
        metavar="PORT",
        type=int,
        default=0,
        help="UDP port of the mesh's multicast group; 0 picks a free one, so that two demos "
        "on one machine never join each other (default: %(default)s)",
    )
    p.add_argument(
        "--heartbeat-ms",
        metavar="MS",
        type=int,
        default=250,
        help="election heartbeat interval in ms (default: %(default)s)",
    )
    p.add_argument(
        "--drain-per-min",
        metavar="PER_MILLE",
        type=int,
        default=30,
        help="simulated battery drain, per mille per minute (default: %(default)s)",
    )
    p.add_argument(
        "--leader-drain-per-min",
        metavar="PER_MILLE",
        type=int,
        default=300,
        help="extra drain while leading, per mille per minute (default: %(default)s)",
    )
    p.add_argument(
        "--firmware",
        type=int,
        default=0,
        metavar="N",
        help="also run N ESP32-style nodes: the firmware on the MicroPython unix port "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--restart-after",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="start a node that died again after this long, as systemd would; 0: never "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--duration",
        metavar="SECONDS",
        type=float,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    return p


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output()
    if not 1 <= args.agents <= 32:
        out.say("--agents must be 1..32", error=True)
        return 2
    if args.mqtt:
        try:
            args.mqtt = parse_host_port("--mqtt", args.mqtt, 1883)
        except ConfigError as exc:
            out.say(str(exc), error=True)
            return 2
    demo = Demo(args, out)
    # Ctrl-C, SIGTERM and SIGHUP (the terminal closed) all ask for the same orderly stop.
    # SIGINT is set even when a non-interactive shell started the demo in the background
    # (which leaves SIGINT ignored, and the demo unstoppable by it).
    for sig in STOP_SIGNALS:
        signal.signal(sig, demo.request_stop)
    try:
        url, gateway = demo.start_gateway()
        demo.start_agents(gateway)
        if args.firmware:
            demo.start_firmware_nodes(gateway)
        out.say(
            "%d agents%s in mesh %r over %s"
            % (
                args.agents,
                " and %d firmware nodes" % args.firmware if args.firmware else "",
                args.mesh,
                "MQTT %s:%d" % args.mqtt
                if args.mqtt
                else "UDP multicast on loopback (port %d)" % demo.mesh_port,
            )
        )
        out.say("dashboard %s" % url)
        out.say("logs and state in %s; Ctrl-C to stop" % demo.dir)
        if demo.control.keys():
            out.say(KEY_HELP)
        demo.run(args.duration)
    except StartError as exc:
        if demo.stop_reason is not None:
            return 0  # asked to stop while starting: that is no failure
        out.say(str(exc), error=True)
        return 1
    finally:
        out.say("stopping (%s)" % (demo.stop_reason or "error"))
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
