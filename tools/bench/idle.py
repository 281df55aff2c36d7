"""`meshelect bench idle`: CPU and memory of idle agents with default settings.

The target: an idle agent uses under 2% of one core and under 60 MB. This starts N real agent
processes on loopback (UDP multicast, or MQTT through a Mosquitto it starts itself) and the real
gateway (`python -m gateway`), lets the mesh elect and settle, then measures each agent's CPU
time and resident memory from /proc over a quiet window. Only what loopback needs is configured (addresses,
ports, state dir); heartbeat, status refresh, sampling, sensors and mDNS keep their defaults.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from agent.status import read_status
from testkit.broker import Mosquitto
from testkit.gateway import GatewayProcess
from testkit.tools import MissingTool, python_env
from testkit.waiting import poll_until
from tools.bench.usage import measure

AGREE_TIMEOUT_S = 30.0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def idle_agent_toml(
    node_id: str, mesh: str, state_dir: str, transport: str, election_port: int, target: str
) -> str:
    """Default settings but for loopback: `target` is the gateway (UDP) or the broker (MQTT)."""
    lines = [
        'node_id = "%s"' % node_id,
        'mesh = "%s"' % mesh,
        'transport = "%s"' % transport,
        'state_dir = "%s"' % state_dir,
        'log_format = "json"',
        "[udp]",
        'interface = "127.0.0.1"',
        "port = %d  # our own election port: no crosstalk with other meshes here" % election_port,
        "unicast_port = 0  # several agents on one host",
        "[discovery]",
        'interface = "127.0.0.1"',
    ]
    if transport == "udp":
        lines += ["[gateway]", 'address = "%s"' % target]
    else:
        lines += ["[mqtt]", 'broker = "%s"' % target]
    return "\n".join(lines) + "\n"


class IdleMesh:
    """N agents and the gateway (plus a broker for MQTT) on loopback, in a temp folder."""

    def __init__(self, agents: int, transport: str) -> None:
        self.n = agents
        self.transport = transport
        self.mesh = "idle-%d" % os.getpid()
        self.tmp = tempfile.TemporaryDirectory(prefix="meshelect-idle-")
        self.dir = self.tmp.name
        self.procs: list[subprocess.Popen[Any]] = []
        self.broker: Mosquitto | None = None
        self.gateway: GatewayProcess | None = None

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[Any]:
        with open(os.path.join(self.dir, log_name), "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=python_env()
            )
        self.procs.append(proc)
        return proc

    def start(self) -> list[subprocess.Popen[Any]]:
        db = os.path.join(self.dir, "gateway.db")
        if self.transport == "mqtt":
            self.broker = Mosquitto().start()
            target = "127.0.0.1:%d" % self.broker.port
            mqtt = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.broker.port)]
            self.gateway = GatewayProcess(db, *mqtt, "--no-udp").start()
        else:
            self.gateway = GatewayProcess(db).start()
            target = "%s:%d" % self.gateway.udp
        election_port = _free_udp_port()
        agents = []
        for index in range(1, self.n + 1):
            state = os.path.join(self.dir, "n%d" % index)
            os.makedirs(state)
            path = os.path.join(state, "agent.toml")
            with open(path, "w") as f:
                f.write(
                    idle_agent_toml(
                        "n%d" % index, self.mesh, state, self.transport, election_port, target
                    )
                )
            argv = [sys.executable, "-m", "agent.runtime", "--config", path]
            agents.append(self._spawn(argv, "n%d.log" % index))
        return agents

    def leader_agreed(self) -> bool:
        leaders = set()
        for index in range(1, self.n + 1):
            status = read_status(os.path.join(self.dir, "n%d" % index))
            if status is None:
                return False
            leaders.add(status.get("leader"))
        return len(leaders) == 1 and None not in leaders

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.gateway is not None:
            self.gateway.stop()
        if self.broker is not None:
            self.broker.close()
        self.tmp.cleanup()


def idle(args: argparse.Namespace) -> int:
    mesh = IdleMesh(args.agents, args.transport)
    try:
        agents = mesh.start()
        settled = poll_until(
            lambda: mesh.leader_agreed() or any(p.poll() is not None for p in agents),
            AGREE_TIMEOUT_S,
            0.2,
        )
        if not settled or not mesh.leader_agreed():
            print("no leader agreed within %.0f s (logs: %s)" % (AGREE_TIMEOUT_S, mesh.dir))
            return 1
        time.sleep(args.settle_s)  # start-up (imports, mDNS announcements) is not idle
        usage = measure([p.pid for p in agents], args.seconds)
    finally:
        mesh.close()
    print(
        "idle agents over %s, %d agents, default settings, %.0f s window"
        % (args.transport, args.agents, args.seconds)
    )
    for index, (cpu, rss) in enumerate(usage, 1):
        print("  agent n%d: cpu %.2f%% of one core, rss %.1f MB" % (index, cpu, rss / 1e6))
    cpus = [u[0] for u in usage]
    rsss = [u[1] / 1e6 for u in usage]
    print(
        "  cpu %% of one core: median %.2f  max %.2f   rss MB: median %.1f  max %.1f"
        % (statistics.median(cpus), max(cpus), statistics.median(rsss), max(rsss))
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshelect bench idle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--transport", choices=("udp", "mqtt"), default="udp", help="(default: %(default)s)"
    )
    p.add_argument("--agents", type=int, default=3, help="agent processes (default: %(default)s)")
    p.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="measuring window in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=5.0,
        help="seconds to wait after the election (default: %(default)s)",
    )
    return p


def cli(argv: list[str]) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.agents < 1 or args.seconds <= 0:
        p.error("--agents must be >= 1 and --seconds > 0")
    try:
        return idle(args)
    except MissingTool as exc:
        print("meshelect bench idle: missing %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
