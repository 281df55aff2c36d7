"""A mesh of real agent processes: one agent per network namespace, the real gateway
(``python -m gateway``) on one more host, and for MQTT a Mosquitto beside the gateway.

    with MeshUnderTest(3, "udp", mesh="t-udp") as mesh:
        for host, battery in ((1, 950), (2, 700), (3, 450)):
            mesh.start_agent(host, battery)
        leader = mesh.wait_for(mesh.agreed_leader, 20)   # "n1"
        mesh.kill(1)                                     # kill -9
        report = delivery_report(mesh, killed)           # what the gateway stored vs. took
    mesh.cleanup()                                       # the temp folder (logs, databases)

Agents report through their status files and JSON logs; what reached the gateway is read from
the gateway's own SQLite database and ``/metrics``. Used by the failover bench and the tests.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from agent.status import read_status
from testkit.broker import Mosquitto
from testkit.gateway import (
    GatewayProcess,
    accepted_batches,
    conflicting_readings,
    parse_counters,
    stored_readings,
)
from testkit.netns import Lab
from testkit.tools import python_env
from testkit.waiting import poll_until

GATEWAY_PORT = 47471
BROKER_PORT = 18830  # inside the gateway's namespace: no clash with anything outside it
DEFAULT_PREFIX = "ma-"
DEFAULT_SUBNET = "10.93.0.0/24"


def agent_config(
    node_id: str,
    mesh: str,
    state_dir: str,
    battery: int,
    transport: str = "udp",
    broker: str = "",
    heartbeat_ms: int = 250,
    sample_ms: int = 200,
    status_ms: int = 100,
    gateway: str = "",
    extra: str = "",
    mesh_key: str = "",
) -> str:
    """TOML for one test/bench agent: a simulated source whose battery stays at `battery`.
    ``mesh_key``: hex, or "" for an open mesh."""
    lines = [
        'node_id = "%s"' % node_id,
        'mesh = "%s"' % mesh,
        'transport = "%s"' % transport,
        "heartbeat_ms = %d" % heartbeat_ms,
        'state_dir = "%s"' % state_dir,
        'log_format = "json"',
        "status_ms = %d" % status_ms,
    ]
    if mesh_key:
        lines.append('mesh_key = "%s"' % mesh_key)
    lines += ["[data]", "sample_ms = %d" % sample_ms]
    if gateway:
        lines += ["[gateway]", 'address = "%s"' % gateway]
    if broker:
        lines += ["[mqtt]", 'broker = "%s"' % broker, "reconnect_max_ms = 2000"]
    lines += [
        "[[sensors]]",
        'type = "simulated"',
        "battery_start = %d" % battery,
        "[sensors.metrics.temp]",
        "base = 21000",
        "amplitude = 2000",
    ]
    return "\n".join(lines) + "\n" + extra


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a half-written last line is skipped."""
    records = []
    try:
        with open(path) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
    except OSError:
        pass
    return records


def parse_log_time(text: str) -> float:
    """Seconds since the epoch from an agent log's ``ts`` (``2026-11-26T10:00:00.123Z``)."""
    try:
        main, ms = text.rstrip("Z").split(".")
        return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return 0.0


class MeshUnderTest:
    """N agents in a namespace lab plus the real gateway (and, for MQTT, a broker) on host N+1.

    ``prefix`` names the lab's namespaces; the lab adds this process's pid, so meshes of
    parallel runs (a test run and a bench) never meet even with the same prefix.
    """

    def __init__(
        self,
        agents: int,
        transport: str = "udp",
        mesh: str = "bench",
        heartbeat_ms: int = 250,
        prefix: str = DEFAULT_PREFIX,
        subnet: str = DEFAULT_SUBNET,
        mdns_gateway: bool = False,
        sample_ms: int = 200,
        status_ms: int = 100,
        mesh_key: str = "",
        agent_extra: str = "",
        gateway_args: tuple[str, ...] = (),
    ) -> None:
        self.n = agents
        self.gateway_args = gateway_args  # more options for the gateway (--silent-after 3s)
        self.mesh_key = mesh_key  # hex; the gateway gets it too
        self.transport = transport
        self.mesh = mesh
        self.heartbeat_ms = heartbeat_ms
        self.mdns_gateway = mdns_gateway
        self.sample_ms = sample_ms
        self.status_ms = status_ms
        self.agent_extra = agent_extra  # TOML tables every agent gets (e.g. [election])
        self.lab = Lab(prefix=prefix, subnet=subnet, hosts=agents + 1)
        self.gw_host = agents + 1
        self.tmp = tempfile.TemporaryDirectory(prefix="meshelect-mesh-")
        self.dir = self.tmp.name
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        self.gateway: GatewayProcess | None = None
        self.gateway_db = os.path.join(self.dir, "gateway.db")
        self.broker: Mosquitto | None = None
        self.batteries: dict[int, int] = {}

    def node_id(self, host: int) -> str:
        return "n%d" % host

    def host_of(self, node_id: str) -> int:
        return int(node_id[1:])

    def state_dir(self, host: int) -> str:
        return os.path.join(self.dir, "s%d" % host)

    def log_path(self, host: int) -> str:
        return os.path.join(self.dir, "agent%d.log" % host)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> MeshUnderTest:
        self.lab.open()
        try:
            address = self.lab.address(self.gw_host)
            extra: list[str] = []
            if self.transport == "mqtt":
                self.broker = Mosquitto(
                    port=BROKER_PORT, host=address, netns=self.lab.ns(self.gw_host)
                ).start()
                extra = ["--mqtt-host", address, "--mqtt-port", str(BROKER_PORT), "--no-udp"]
            elif self.mdns_gateway:
                extra = ["--mdns-interface", address]
            if self.mesh_key:
                extra += ["--mesh-key", "%s=%s" % (self.mesh, self.mesh_key)]
            extra += self.gateway_args
            self.gateway = GatewayProcess(
                self.gateway_db,
                *extra,
                udp_port=GATEWAY_PORT,
                host=address,
                wrap=self.lab.command(self.gw_host, []),
                mdns=self.mdns_gateway,
            ).start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for host in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop_agent(host)
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                self.gateway.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.close()
        self.lab.close()

    def cleanup(self) -> None:
        """Delete the temp folder (agents' logs and state, the gateway's database)."""
        self.tmp.cleanup()

    def __enter__(self) -> MeshUnderTest:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- agents ------------------------------------------------------------------------------
    def start_agent(self, host: int, battery: int, extra: str = "") -> subprocess.Popen[Any]:
        self.batteries[host] = battery
        os.makedirs(self.state_dir(host), exist_ok=True)
        gateway = (
            "" if self.mdns_gateway else "%s:%d" % (self.lab.address(self.gw_host), GATEWAY_PORT)
        )
        broker = ""
        if self.broker is not None:
            broker = "%s:%d" % (self.broker.host, self.broker.port)
        path = os.path.join(self.dir, "agent%d.toml" % host)
        with open(path, "w") as f:
            f.write(
                agent_config(
                    self.node_id(host),
                    self.mesh,
                    self.state_dir(host),
                    battery,
                    self.transport,
                    broker,
                    self.heartbeat_ms,
                    sample_ms=self.sample_ms,
                    status_ms=self.status_ms,
                    gateway=gateway,
                    extra=self.agent_extra + extra,
                    mesh_key=self.mesh_key,
                )
            )
        proc = self.lab.run(
            host,
            [sys.executable, "-m", "agent.runtime", "--config", path],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path(host), "a"),  # noqa: SIM115 (the child holds it)
            env=python_env(),
        )
        self.procs[host] = proc
        return proc

    def kill(self, host: int) -> None:
        """kill -9: no shutdown code runs, held readings die with the process."""
        proc = self.procs[host]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def stop_agent(self, host: int) -> None:
        """SIGTERM (a graceful stop: a leader hands over), then SIGKILL if it lingers."""
        proc = self.procs[host]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill(host)

    def alive(self) -> list[int]:
        return sorted(h for h, p in self.procs.items() if p.poll() is None)

    def statuses(self) -> dict[int, dict[str, Any]]:
        """Each live agent's last status file (only if written by its current process)."""
        out = {}
        for host in self.alive():
            status = read_status(self.state_dir(host))
            if status is not None and status.get("pid") == self.procs[host].pid:
                out[host] = status
        return out

    def agreed_leader(self, hosts: list[int] | None = None) -> str | None:
        """The leader every given live agent follows (the leader itself included), or None."""
        hosts = hosts if hosts is not None else self.alive()
        statuses = self.statuses()
        if any(h not in statuses for h in hosts):
            return None
        leaders = {statuses[h].get("leader") for h in hosts}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        if leader is None:
            return None
        for h in hosts:
            if self.node_id(h) == leader and statuses[h].get("role") != "leader":
                return None
        return str(leader)

    def agent_events(self, host: int) -> list[dict[str, Any]]:
        return read_jsonl(self.log_path(host))

    def wait_for(self, predicate: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
        return poll_until(predicate, timeout, step)

    # -- what the gateway has ----------------------------------------------------------------
    def batches(self) -> list[dict[str, Any]]:
        """The batches the gateway accepted: ``leader``, ``term``, ``id``, ``wall`` (its clock)."""
        return accepted_batches(self.gateway_db, self.mesh)

    def stored(self) -> dict[tuple[str, int], set[int]]:
        """(node, boot) -> the seqs the gateway stored."""
        return stored_readings(self.gateway_db, self.mesh)

    def conflicts(self, node: str) -> int:
        """Readings of ``node`` the gateway set aside as conflicts (an id stored twice)."""
        return conflicting_readings(self.gateway_db, self.mesh, node)

    def gateway_get(self, path: str) -> str | None:
        """GET ``path`` from the gateway's HTTP port (inside the lab: a short Python child in
        the gateway's namespace fetches it); None if it does not answer."""
        if self.gateway is None:
            return None
        fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        argv = [sys.executable, "-c", fetch, self.gateway.url + path]
        try:
            done = self.lab.exec(self.gw_host, argv, timeout=15)
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

    def gateway_json(self, path: str) -> Any:
        """GET ``path`` from the gateway's API as JSON; AssertionError if it does not answer."""
        text = self.gateway_get(path)
        assert text is not None, "the gateway did not answer GET %s" % path
        return json.loads(text)

    def members(self) -> dict[str, dict[str, Any]]:
        """The gateway's member rows of this mesh (what the dashboard shows), by node."""
        view = self.gateway_json("/api/meshes/" + self.mesh)
        return {m["node"]: m for m in view["members"]}

    def silent_alerts(self, node: str) -> list[dict[str, Any]]:
        """The gateway's node_silent alerts for ``node`` in this mesh."""
        rows = self.gateway_json("/api/alerts?mesh=%s&limit=500" % self.mesh)
        return [a for a in rows if a["kind"] == "node_silent" and a["node"] == node]

    def gateway_counters(self) -> dict[str, float]:
        """The gateway's counters from its ``/metrics`` (empty if it does not answer)."""
        text = self.gateway_get("/metrics")
        return parse_counters(text) if text is not None else {}


def boot_progress(state_dir: str) -> tuple[int, int, int]:
    """(boot, readings taken, readings confirmed in order) from an agent's last status."""
    status = read_status(state_dir) or {}
    buf = status.get("buffer") or {}
    taken = int(buf.get("taken", 0))
    first_held = buf.get("unconfirmed_from")
    return int(status.get("boot", 0)), taken, taken if first_held is None else int(first_held) - 1


def delivery_report(
    mesh: MeshUnderTest, killed_boots: dict[tuple[str, int], tuple[int, int]]
) -> dict[str, Any]:
    """Compare what agents took with what the gateway stored, per (node, boot).

    Every reading an agent saw confirmed (all seqs below its oldest unconfirmed one) must be
    stored: a missing one is `lost`. Readings still unconfirmed are either `in_flight_at_end`
    (live agents) or `lost_with_kill` (a boot ended by kill -9: the readings it held in RAM,
    not yet acknowledged by the gateway, die with it; counted, not hidden).
    `killed_boots`: (node, boot) -> (taken, confirmed) from its last status before the kill.
    """
    stored = mesh.stored()
    progress: dict[tuple[str, int], tuple[int, int]] = dict(killed_boots)
    for host in mesh.procs:
        boot, taken, confirmed = boot_progress(mesh.state_dir(host))
        if boot:
            progress[(mesh.node_id(host), boot)] = (taken, confirmed)
    lost = lost_with_kill = in_flight = taken_total = 0
    for key in sorted(set(progress) | set(stored)):
        seqs = stored.get(key, set())
        taken, confirmed = progress.get(key, (0, 0))
        # A killed boot may have taken a few more after its last status: count those too.
        top = max(taken, max(seqs) if seqs else 0)
        taken_total += top
        for seq in range(1, top + 1):
            if seq in seqs:
                continue
            if seq <= confirmed:
                lost += 1
            elif key in killed_boots:
                lost_with_kill += 1
            else:
                in_flight += 1
    return {
        "taken": taken_total,
        "stored": sum(len(s) for s in stored.values()),
        "lost": lost,
        "lost_with_kill": lost_with_kill,
        "in_flight_at_end": in_flight,
    }
