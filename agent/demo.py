"""`meshelect demo`: a gateway and a mesh of agents on this machine, until Ctrl-C.

Every part is a separate process, as on real hardware: the gateway (`python -m gateway`) and
N agents talking UDP multicast and mDNS on loopback (or MQTT with `--mqtt HOST:PORT`). The
agents' simulated batteries drain, faster while leading, so leadership visibly moves on the
dashboard. Everything lives in a temporary folder that is removed at the end.
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
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from agent.config import ConfigError, parse_host_port

GATEWAY_LINE = re.compile(r"meshelect gateway: (\S+) udp (?:(\S+):(\d+)|off)")
GATEWAY_START_S = 30.0
STOP_GRACE_S = 5.0


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
) -> str:
    lines = [
        'node_id = "node-%d"' % index,
        'mesh = "%s"' % mesh,
        'transport = "%s"' % ("mqtt" if mqtt else "udp"),
        "heartbeat_ms = %d" % heartbeat_ms,
        'state_dir = "%s"' % state_dir,
        "[udp]",
        'interface = "127.0.0.1"',
        "unicast_port = 0  # several agents on one host",
        "[discovery]",
        'interface = "127.0.0.1"',
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


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.TemporaryDirectory(prefix="meshelect-demo-")
        self.dir = self.tmp.name
        self.children: list[subprocess.Popen[Any]] = []
        self.env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.env["PYTHONPATH"] = root + (
            os.pathsep + self.env["PYTHONPATH"] if self.env.get("PYTHONPATH") else ""
        )

    def _spawn(self, argv: list[str], log_name: str, pipe: bool = False) -> subprocess.Popen[Any]:
        log = open(os.path.join(self.dir, log_name), "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else log,
            stderr=log,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )
        log.close()
        self.children.append(proc)
        return proc

    def start_gateway(self) -> tuple[str, tuple[str, int] | None]:
        argv = [
            sys.executable,
            "-m",
            "gateway",
            "--db",
            os.path.join(self.dir, "gateway.db"),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.args.http_port),
            "--mdns-interface",
            "127.0.0.1",
        ]
        if self.args.mqtt:
            host, port = self.args.mqtt
            argv += ["--mqtt-host", host, "--mqtt-port", str(port), "--no-udp"]
        else:
            argv += ["--udp-host", "127.0.0.1", "--udp-port", "0"]
        proc = self._spawn(argv, "gateway.log", pipe=True)
        assert proc.stdout is not None
        line = _read_line_matching(proc.stdout, GATEWAY_LINE, GATEWAY_START_S)
        if line is None:
            raise RuntimeError("the gateway did not start (is `meshelect[gateway]` installed?)")
        match = GATEWAY_LINE.search(line)
        assert match is not None
        # Keep draining its stdout into the log so the pipe never fills up.
        _drain_to_file(proc.stdout, os.path.join(self.dir, "gateway.log"))
        udp = (match.group(2), int(match.group(3))) if match.group(2) else None
        return match.group(1), udp

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
                    )
                )
            self._spawn(
                [sys.executable, "-m", "agent.runtime", "--config", path],
                "node-%d.log" % index,
            )

    def start_firmware_nodes(self, gateway: tuple[str, int] | None) -> None:
        """ESP32-style nodes: the real firmware, compiled to .mpy, on the MicroPython unix port."""
        from pathlib import Path

        from tools import firmware as firmware_tool

        exe = shutil.which("micropython") or os.path.join(
            os.path.dirname(sys.executable), "micropython"
        )
        if not os.path.exists(exe):
            raise RuntimeError("--firmware needs the MicroPython unix port (micropython command)")
        build = Path(self.dir) / "firmware-build"
        try:
            firmware_tool.build(build)
        except firmware_tool.ToolError as exc:
            raise RuntimeError("cannot build the firmware: %s" % exc) from None
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
                "udp": {"interface": "127.0.0.1", "unicast_port": 0},
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
            log = open(folder / "out.log", "ab")  # noqa: SIM115 (the child keeps it)
            proc = subprocess.Popen(
                [exe, "main.py"],
                cwd=folder,
                env={**self.env, "MICROPYPATH": ".frozen:."},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            self.children.append(proc)

    def stop(self) -> None:
        # Agents first (a leader hands over as it goes), the gateway last.
        for proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.children:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        self.children.clear()
        self.tmp.cleanup()


def _read_line_matching(stream: IO[bytes], pattern: re.Pattern[str], timeout: float) -> str | None:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                continue
            raw = stream.readline()
            if not raw:
                return None
            line = raw.decode("utf-8", "replace")
            if pattern.search(line):
                return line
    finally:
        selector.close()
    return None


def _drain_to_file(stream: IO[bytes], path: str) -> None:
    import threading

    def pump() -> None:
        with open(path, "ab") as out:
            for chunk in iter(lambda: stream.read1(4096), b""):  # type: ignore[attr-defined]
                out.write(chunk)
                out.flush()

    threading.Thread(target=pump, daemon=True).start()


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
        "--http-port",
        metavar="PORT",
        type=int,
        default=8470,
        help="dashboard port, 0 picks a free one (default: %(default)s)",
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
        "--duration",
        metavar="SECONDS",
        type=float,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    return p


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.agents <= 32:
        print("meshelect demo: --agents must be 1..32", file=sys.stderr)
        return 2
    if args.mqtt:
        try:
            args.mqtt = parse_host_port("--mqtt", args.mqtt, 1883)
        except ConfigError as exc:
            print("meshelect demo: %s" % exc, file=sys.stderr)
            return 2
    demo = Demo(args)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    # Ctrl-C is how the demo stops, also when a non-interactive shell started it in the
    # background (which would leave SIGINT ignored, and the demo unstoppable by it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        url, gateway = demo.start_gateway()
        demo.start_agents(gateway)
        if args.firmware:
            demo.start_firmware_nodes(gateway)
        print(
            "meshelect demo: %d agents%s in mesh %r over %s"
            % (
                args.agents,
                " and %d firmware nodes" % args.firmware if args.firmware else "",
                args.mesh,
                "MQTT %s:%d" % args.mqtt if args.mqtt else "UDP multicast on loopback",
            )
        )
        print("meshelect demo: dashboard %s" % url, flush=True)
        print("meshelect demo: logs and state in %s; Ctrl-C to stop" % demo.dir, flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stopping and (deadline is None or time.monotonic() < deadline):
            dead = [p for p in demo.children if p.poll() is not None]
            if dead:
                print(
                    "meshelect demo: a process exited (status %s); stopping" % dead[0].returncode,
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print("meshelect demo: %s" % exc, file=sys.stderr)
        return 1
    finally:
        print("meshelect demo: stopping", flush=True)
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
