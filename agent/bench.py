"""`meshelect bench`: measurements on real processes. Subcommands (see `SUBCOMMANDS`):

    meshelect bench core [--sizes 10,100,1000] [--replay-timing]
        The election core on the in-memory mesh (simulated time): failover, messages and bytes
        per election, heartbeat size, CPU per simulated second (agent/bench_core.py).
    meshelect bench failover --agents 5 --kills 20 --transport udp|mqtt [--gateway real|sink]
        N agent processes, one per network namespace (root), the real gateway (or the minimal
        sink below, `--gateway sink`), and M kill -9 of the leader. Prints failover time
        (median, p99) from the kill to every member following the new leader and to the first
        batch from the new leader, readings sent vs delivered, and CPU and memory per agent.
    meshelect bench idle --transport udp|mqtt --seconds N
        3 agents with default settings on loopback (agent/bench_idle.py): CPU % of one core
        and RSS per agent, median and max.
    meshelect bench sink --mesh M --out FILE [--mqtt HOST:PORT] [--mdns]
        A minimal gateway for tests and benchmarks: fences by term, stores each reading once
        (in memory), acknowledges batches, and writes one JSON line per batch to FILE.

The namespace lab comes from the checkout's tests/helpers (run from a checkout, as root).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from agent import strict_cbor
from agent.core import topics
from agent.core.messages import ACK_FENCED, ACK_OK, BATCH, BATCH_ACK, Msg
from agent.core.wire import Codec, WireError

GATEWAY_PORT = 47471
SINK_ID = "sink"
LAB_PREFIX = "ma-"
LAB_SUBNET = "10.93.0.0/24"

# ------------------------------------------------------------------------------------- the sink


class Sink:
    """Gateway logic for tests: fencing by term, dedup by (node, boot, seq), BATCH_ACK."""

    def __init__(self, mesh: str, key: bytes | None, out: Any) -> None:
        self.codec = Codec(mesh, key, strict_cbor.dumps, strict_cbor.loads, boot=int(time.time()))
        self.mesh = mesh
        self.out = out
        self.highest_term = 0
        self.stored: set[tuple[str, int, int]] = set()
        self.arrivals = 0
        self.duplicates = 0
        self.fenced = 0
        self.dropped = 0

    def handle(self, data: bytes) -> tuple[str, bytes] | None:
        """(leader, BATCH_ACK frame) for a batch frame; None for anything else."""
        try:
            msg = self.codec.decode(data, int(time.monotonic() * 1000))
        except WireError as exc:
            self.dropped += 1
            self._emit({"event": "dropped", "reason": exc.reason})
            return None
        if msg.kind != BATCH or not isinstance(msg.body, dict):
            return None
        batch = msg.body
        new = dup = 0
        if msg.term < self.highest_term:
            status = ACK_FENCED
            self.fenced += 1
        else:
            status = ACK_OK
            self.highest_term = msg.term
            for reading in batch.get("readings", []):
                key = (reading[0], reading[1], reading[2])
                self.arrivals += 1
                if key in self.stored:
                    dup += 1
                    self.duplicates += 1
                else:
                    self.stored.add(key)
                    new += 1
        self._emit(
            {
                "event": "batch",
                "leader": msg.sender,
                "term": msg.term,
                "id": batch.get("id"),
                "status": status,
                "new": new,
                "dup": dup,
                "readings": [[r[0], r[1], r[2]] for r in batch.get("readings", [])]
                if status == ACK_OK
                else [],
            }
        )
        ack = Msg(
            BATCH_ACK,
            SINK_ID,
            term=self.highest_term,
            target=msg.sender,
            body=[batch.get("id", 0), status, self.highest_term],
        )
        return msg.sender, bytes(self.codec.encode(ack))

    def _emit(self, record: dict[str, Any]) -> None:
        record["wall"] = time.time()
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()


class _SinkProtocol(asyncio.DatagramProtocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.sink.handle(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply[1], addr)


async def _run_sink(args: argparse.Namespace) -> None:
    key = bytes.fromhex(args.mesh_key) if args.mesh_key else None
    out = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115 (lives as long as the sink)
    sink = Sink(args.mesh, key, out)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closers: list[Callable[[], Any]] = []
    if args.mqtt:
        import paho.mqtt.client as mqtt

        host, _, port = args.mqtt.rpartition(":")
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        prefix = args.mqtt_prefix

        def on_message(c: Any, userdata: Any, message: Any) -> None:
            payload = bytes(message.payload)
            loop.call_soon_threadsafe(reply_mqtt, payload)

        def reply_mqtt(payload: bytes) -> None:
            reply = sink.handle(payload)
            if reply is not None:
                ack_topic = topics.topic(prefix, args.mesh, topics.BATCH_ACK, reply[0])
                client.publish(ack_topic, reply[1], qos=topics.qos(topics.BATCH_ACK))

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            c.subscribe(topics.batch_filter(prefix), qos=topics.qos(topics.BATCH))

        client.on_message = on_message
        client.on_connect = on_connect
        client.reconnect_delay_set(0.25, 2)  # type: ignore[arg-type]
        client.connect_async(host, int(port), keepalive=5)
        client.loop_start()
        closers.append(client.loop_stop)
        closers.append(client.disconnect)
    else:
        endpoint, _ = await loop.create_datagram_endpoint(
            lambda: _SinkProtocol(sink), local_addr=(args.host, args.port)
        )
        closers.append(endpoint.close)
    zc = None
    if args.mdns:
        from zeroconf import IPVersion, ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        address = args.mdns
        zc = AsyncZeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
        info = ServiceInfo(
            "_meshelect-gw._udp.local.",
            "sink-%s._meshelect-gw._udp.local." % args.mesh,
            addresses=[socket.inet_aton(address)],
            port=args.port,
            properties={"proto": "1"},
        )
        await zc.async_register_service(info)
    sink._emit({"event": "ready"})
    await stop.wait()
    if zc is not None:
        await zc.async_close()
    for close in reversed(closers):
        with contextlib.suppress(Exception):
            close()
    sink._emit(
        {
            "event": "summary",
            "stored": len(sink.stored),
            "arrivals": sink.arrivals,
            "duplicates": sink.duplicates,
            "fenced": sink.fenced,
            "dropped": sink.dropped,
        }
    )


def sink_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="meshelect bench sink", description="a test gateway sink")
    p.add_argument("--mesh", required=True)
    p.add_argument("--mesh-key", default="", help="hex")
    p.add_argument("--out", help="JSON lines file (default stdout)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=GATEWAY_PORT)
    p.add_argument("--mqtt", help="HOST:PORT: take batches from a broker instead of UDP")
    p.add_argument("--mqtt-prefix", default=topics.DEFAULT_PREFIX)
    p.add_argument("--mdns", help="advertise _meshelect-gw._udp on this IPv4 address")
    args = p.parse_args(argv)
    asyncio.run(_run_sink(args))
    return 0


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


# ----------------------------------------------------------------------- agents in namespaces


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
) -> str:
    """TOML for one test/bench agent: a simulated source whose battery stays at `battery`."""
    lines = [
        'node_id = "%s"' % node_id,
        'mesh = "%s"' % mesh,
        'transport = "%s"' % transport,
        "heartbeat_ms = %d" % heartbeat_ms,
        'state_dir = "%s"' % state_dir,
        'log_format = "json"',
        "status_ms = %d" % status_ms,
        "[data]",
        "sample_ms = %d" % sample_ms,
    ]
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


def read_status_file(state_dir: str) -> dict[str, Any] | None:
    from agent.status import read_status

    return read_status(state_dir)


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, resident memory in bytes) of a live process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/%d/status" % pid) as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0, 0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, rss_kb * 1024


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class MeshUnderTest:
    """N agents in a namespace lab plus a sink (and, for MQTT, a broker) on one more host."""

    def __init__(
        self,
        agents: int,
        transport: str = "udp",
        mesh: str = "bench",
        heartbeat_ms: int = 250,
        prefix: str = LAB_PREFIX,
        subnet: str = LAB_SUBNET,
        mdns_gateway: bool = False,
        sample_ms: int = 200,
        status_ms: int = 100,
        gateway: str = "sink",
    ) -> None:
        from tests.helpers.netns import Lab

        self.n = agents
        self.transport = transport
        self.mesh = mesh
        self.heartbeat_ms = heartbeat_ms
        self.mdns_gateway = mdns_gateway
        self.sample_ms = sample_ms
        self.status_ms = status_ms
        self.lab = Lab(prefix=prefix, subnet=subnet, hosts=agents + 1)
        self.gw_host = agents + 1
        self.tmp = tempfile.TemporaryDirectory(prefix="meshelect-bench-")
        self.dir = self.tmp.name
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        self.sink_out = os.path.join(self.dir, "sink.jsonl")
        self.sink: subprocess.Popen[Any] | None = None
        # "sink": the bench's own sink; "real": `python -m gateway` (agent/bench_gateway.py).
        self.gateway_kind = gateway
        self.gateway: Any = None
        self.gateway_db = os.path.join(self.dir, "gateway.db")
        self.broker: Any = None
        self.batteries: dict[int, int] = {}

    def node_id(self, host: int) -> str:
        return "n%d" % host

    def state_dir(self, host: int) -> str:
        return os.path.join(self.dir, "s%d" % host)

    def log_path(self, host: int) -> str:
        return os.path.join(self.dir, "agent%d.log" % host)

    def open(self) -> MeshUnderTest:
        self.lab.open()
        try:
            broker_arg: list[str] = []
            if self.transport == "mqtt":
                from tests.helpers.broker import Mosquitto

                self.broker = Mosquitto(
                    port=18830, host=self.lab.address(self.gw_host), netns=self.lab.ns(self.gw_host)
                )
                self.broker.start()
                broker_arg = ["--mqtt", "%s:%d" % (self.broker.host, self.broker.port)]
            if self.gateway_kind == "real":
                from agent.bench_gateway import start_real_gateway

                broker = (self.broker.host, self.broker.port) if self.broker else None
                self.gateway = start_real_gateway(
                    self.lab, self.gw_host, self.gateway_db, GATEWAY_PORT, broker
                )
                return self
            mdns = ["--mdns", self.lab.address(self.gw_host)] if self.mdns_gateway else []
            self.sink = self.lab.run(
                self.gw_host,
                [
                    sys.executable,
                    "-m",
                    "agent.bench",
                    "sink",
                    "--mesh",
                    self.mesh,
                    "--out",
                    self.sink_out,
                    *broker_arg,
                    *mdns,
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(self.dir, "sink.err"), "w"),  # noqa: SIM115
                env=_child_env(),
            )
        except BaseException:
            self.close()
            raise
        return self

    def start_agent(self, host: int, battery: int, extra: str = "") -> subprocess.Popen[Any]:
        self.batteries[host] = battery
        os.makedirs(self.state_dir(host), exist_ok=True)
        gateway = (
            "" if self.mdns_gateway else "%s:%d" % (self.lab.address(self.gw_host), GATEWAY_PORT)
        )
        broker = ""
        if self.transport == "mqtt":
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
                    extra=extra,
                )
            )
        proc = self.lab.run(
            host,
            [sys.executable, "-m", "agent.runtime", "--config", path],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path(host), "a"),  # noqa: SIM115
            env=_child_env(),
        )
        self.procs[host] = proc
        return proc

    def kill(self, host: int) -> None:
        proc = self.procs[host]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def stop_agent(self, host: int) -> None:
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
        out = {}
        for host in self.alive():
            status = read_status_file(self.state_dir(host))
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

    def wait_for(self, predicate: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(step)
        return None

    def sink_records(self) -> list[dict[str, Any]]:
        if self.gateway_kind == "real":
            from agent.bench_gateway import gateway_records

            return gateway_records(self.gateway_db, self.mesh)
        return read_jsonl(self.sink_out)

    def duplicate_arrivals(self) -> int | None:
        """Readings the gateway got again (dedup hits); the real gateway counts them in its
        /metrics, not in its database, so ask it (None if it does not answer)."""
        if self.gateway_kind != "real" or self.gateway is None:
            return None
        from agent.bench_gateway import dedup_hits

        return dedup_hits(self.lab, self.gw_host, self.gateway.url)

    def agent_events(self, host: int) -> list[dict[str, Any]]:
        return read_jsonl(self.log_path(host))

    def host_of(self, node_id: str) -> int:
        return int(node_id[1:])

    def close(self) -> None:
        for host in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop_agent(host)
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                self.gateway.stop()
        if self.sink is not None and self.sink.poll() is None:
            self.sink.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sink.wait(5)
        if self.broker is not None:
            with contextlib.suppress(Exception):
                self.broker.close()
        self.lab.close()

    def cleanup(self) -> None:
        self.tmp.cleanup()

    def __enter__(self) -> MeshUnderTest:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def boot_progress(state_dir: str) -> tuple[int, int, int]:
    """(boot, readings taken, readings confirmed in order) from an agent's last status."""
    status = read_status_file(state_dir) or {}
    buf = status.get("buffer") or {}
    taken = int(buf.get("taken", 0))
    first_held = buf.get("unconfirmed_from")
    return int(status.get("boot", 0)), taken, taken if first_held is None else int(first_held) - 1


def delivery_report(
    mesh: MeshUnderTest, killed_boots: dict[tuple[str, int], tuple[int, int]]
) -> dict[str, Any]:
    """Compare what agents took with what the sink stored, per (node, boot).

    Every reading an agent saw confirmed (all seqs below its oldest unconfirmed one) must be
    stored: a missing one is `lost`. Readings still unconfirmed are either `in_flight_at_end`
    (live agents) or `lost_with_kill` (a boot ended by kill -9: the readings it held in RAM,
    not yet acknowledged by the gateway, die with it; counted, not hidden).
    `killed_boots`: (node, boot) -> (taken, confirmed) from its last status before the kill.
    """
    stored: dict[tuple[str, int], set[int]] = {}
    arrivals = 0
    duplicate_arrivals = 0
    for record in mesh.sink_records():
        if record.get("event") == "batch":
            arrivals += len(record.get("readings", []))
            duplicate_arrivals += int(record.get("dup", 0))
            for node, boot, seq in record.get("readings", []):
                stored.setdefault((node, boot), set()).add(seq)
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
        "arrivals": arrivals,
        "duplicate_arrivals": duplicate_arrivals,
        "lost": lost,
        "lost_with_kill": lost_with_kill,
        "in_flight_at_end": in_flight,
    }


# ---------------------------------------------------------------------------- failover bench


def failover(args: argparse.Namespace) -> int:
    n = args.agents
    if n < 2:
        print("need at least 2 agents", file=sys.stderr)
        return 2
    follow_times: list[float] = []
    batch_times: list[float] = []
    killed_boots: dict[tuple[str, int], tuple[int, int]] = {}
    usage: dict[int, tuple[float, int]] = {}
    mesh = MeshUnderTest(
        n,
        args.transport,
        heartbeat_ms=args.heartbeat_ms,
        sample_ms=args.sample_ms,
        status_ms=args.status_ms,
        gateway=args.gateway,
    )
    with mesh:
        # Close batteries (within the hysteresis margin): a restarted node does not take the
        # lead back, so each kill hits whoever leads now.
        for host in range(1, n + 1):
            mesh.start_agent(host, 950 - 10 * host)
        leader = mesh.wait_for(mesh.agreed_leader, 20)
        if leader is None:
            print("no leader agreed within 20 s", file=sys.stderr)
            return 1
        # Idle figures: CPU over a quiet window, then memory.
        start = {h: process_usage(mesh.procs[h].pid) for h in mesh.alive()}
        t0 = time.monotonic()
        time.sleep(args.idle_s)
        elapsed = time.monotonic() - t0
        for h in mesh.alive():
            cpu1, rss = process_usage(mesh.procs[h].pid)
            usage[h] = ((cpu1 - start[h][0]) / elapsed * 100, rss)
        for round_no in range(args.kills):
            leader = mesh.wait_for(mesh.agreed_leader, 20)
            if leader is None:
                print("round %d: no agreed leader" % round_no, file=sys.stderr)
                break
            victim = mesh.host_of(leader)
            kill_wall = time.time()
            mesh.kill(victim)
            boot, taken, confirmed = boot_progress(mesh.state_dir(victim))
            killed_boots[(leader, boot)] = (taken, confirmed)
            survivors = mesh.alive()
            new_leader = mesh.wait_for(partial(_new_leader, mesh, survivors, leader), 20)
            if new_leader is None or new_leader == leader:
                print("round %d: no new leader" % round_no, file=sys.stderr)
                break
            follow = _last_follow_time(mesh, survivors, new_leader, kill_wall)
            first_batch = mesh.wait_for(partial(_first_batch, mesh, new_leader, kill_wall), 20)
            follow_times.append(follow - kill_wall)
            if first_batch is not None:
                batch_times.append(first_batch - kill_wall)
            print(
                "kill %2d: %s -> %s  follow %.0f ms  first batch %s"
                % (
                    round_no + 1,
                    leader,
                    new_leader,
                    (follow - kill_wall) * 1000,
                    "%.0f ms" % ((first_batch - kill_wall) * 1000) if first_batch else "none",
                ),
                flush=True,
            )
            mesh.start_agent(victim, mesh.batteries[victim])
            mesh.wait_for(partial(_has_status, mesh, victim), 10)
        # Let the last resends settle before counting.
        time.sleep(args.settle_s)
        report = delivery_report(mesh, killed_boots)
        dups = mesh.duplicate_arrivals()
        if dups is not None:
            report["duplicate_arrivals"] = dups
    mesh.cleanup()
    _print_failover(args, follow_times, batch_times, report, usage)
    return 0 if follow_times else 1


def _has_status(mesh: MeshUnderTest, host: int) -> bool:
    return host in mesh.statuses()


def _new_leader(mesh: MeshUnderTest, hosts: list[int], old: str) -> str | None:
    leader = mesh.agreed_leader(hosts)
    return leader if leader != old else None


def _last_follow_time(mesh: MeshUnderTest, hosts: list[int], leader: str, since: float) -> float:
    """Wall time when the last of `hosts` started following `leader` (from their logs)."""
    latest = since
    for host in hosts:
        when = None
        for event in mesh.agent_events(host):
            if event.get("event") != "role_changed" or event.get("leader") != leader:
                continue
            stamp = parse_log_time(str(event.get("ts", "")))
            if stamp >= since - 0.001:
                when = stamp if when is None else min(when, stamp)
        if when is not None and when > latest:
            latest = when
    return latest


def _first_batch(mesh: MeshUnderTest, leader: str, since: float) -> float | None:
    for record in mesh.sink_records():
        if (
            record.get("event") == "batch"
            and record.get("leader") == leader
            and float(record.get("wall", 0)) >= since
            and record.get("status") == ACK_OK
        ):
            return float(record["wall"])
    return None


def parse_log_time(text: str) -> float:
    import calendar

    try:
        main, ms = text.rstrip("Z").split(".")
        return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return 0.0


def _print_failover(
    args: argparse.Namespace,
    follow: list[float],
    batch: list[float],
    report: dict[str, Any],
    usage: dict[int, tuple[float, int]],
) -> None:
    print()
    print(
        "failover over %s, %d agents, heartbeat %d ms, sample %d ms, %d kills, gateway %s"
        % (
            args.transport,
            args.agents,
            args.heartbeat_ms,
            args.sample_ms,
            len(follow),
            "python -m gateway" if args.gateway == "real" else "bench sink",
        )
    )
    if follow:
        print(
            "  kill -> all follow new leader: median %.0f ms  p99 %.0f ms  max %.0f ms"
            % (
                statistics.median(follow) * 1000,
                percentile(follow, 0.99) * 1000,
                max(follow) * 1000,
            )
        )
    if batch:
        print(
            "  kill -> first batch from new leader: median %.0f ms  p99 %.0f ms  (%d of %d)"
            % (
                statistics.median(batch) * 1000,
                percentile(batch, 0.99) * 1000,
                len(batch),
                len(follow),
            )
        )
    print(
        "  readings: taken %(taken)d  stored %(stored)d  lost %(lost)d  "
        "lost with kill -9 %(lost_with_kill)d  in flight at end %(in_flight_at_end)d  "
        "duplicate arrivals (deduped) %(duplicate_arrivals)d" % report
    )
    for host in sorted(usage):
        cpu, rss = usage[host]
        print("  idle agent n%d: cpu %.2f%% of one core, rss %.1f MB" % (host, cpu, rss / 1e6))


def failover_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="meshelect bench failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--agents", type=int, default=5, help="agent processes (default: %(default)s)")
    p.add_argument(
        "--kills", type=int, default=10, help="leader kills (kill -9) (default: %(default)s)"
    )
    p.add_argument(
        "--transport", choices=("udp", "mqtt"), default="udp", help="(default: %(default)s)"
    )
    p.add_argument(
        "--gateway",
        choices=("real", "sink"),
        default="real",
        help="what takes the batches: the real gateway process (python -m gateway, counted "
        "from its SQLite and /metrics) or the bench's minimal sink (default: %(default)s)",
    )
    p.add_argument("--heartbeat-ms", type=int, default=250, help="(default: %(default)s)")
    p.add_argument(
        "--sample-ms",
        type=int,
        default=500,
        help="each agent's reading interval (default: %(default)s)",
    )
    p.add_argument(
        "--status-ms", type=int, default=250, help="status file refresh (default: %(default)s)"
    )
    p.add_argument(
        "--idle-s",
        type=float,
        default=5.0,
        help="quiet window for CPU figures (default: %(default)s)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=6.0,
        help="wait before counting readings (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("meshelect bench failover: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        import tests.helpers.netns  # noqa: F401
    except ImportError:
        print(
            "meshelect bench failover: run from a meshelect checkout (tests/helpers)",
            file=sys.stderr,
        )
        return 2
    if args.gateway == "real":
        try:
            import gateway.service  # noqa: F401
        except ImportError as exc:
            print(
                "meshelect bench failover: the real gateway needs meshelect[gateway] (%s); "
                "or use --gateway sink" % exc,
                file=sys.stderr,
            )
            return 2
    return failover(args)


# The lead adds core benchmarks here: name -> (function(argv) -> exit status, summary).
def core_cli(argv: list[str]) -> int:
    from agent.bench_core import main as core_main

    return core_main(argv)


def idle_cli(argv: list[str]) -> int:
    from agent.bench_idle import idle_cli as idle_main

    return idle_main(argv)


SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "core": (core_cli, "the election core on the in-memory mesh: 10/100/1000 nodes"),
    "idle": (idle_cli, "CPU and memory of idle agents with default settings (loopback)"),
    "failover": (failover_cli, "kill the leader of a real mesh M times; failover figures"),
    "sink": (sink_cli, "a minimal gateway sink for tests and benchmarks"),
}


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print("usage: meshelect bench {%s} ..." % ",".join(sorted(SUBCOMMANDS)), file=sys.stderr)
        for name in sorted(SUBCOMMANDS):
            print("  %-10s %s" % (name, SUBCOMMANDS[name][1]), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return SUBCOMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(cli())
