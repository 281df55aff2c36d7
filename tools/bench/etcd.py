"""etcd side by side with meshelect (``meshelect bench failover --compare etcd``).

A five-member etcd cluster on loopback, every member its own process on free ports with its
data dir in a temp folder, raft heartbeat/election 50/250 ms (etcd's tightest setting at a
50 ms heartbeat: it wants the election timeout at least five heartbeats). K times: kill -9 the
raft leader, then poll every survivor's ``/v3/maintenance/status`` (the v3 HTTP/JSON API)
until all of them name the same new leader; the time from the kill to that poll is etcd's
"kill -> all follow". The victim is then started again on its data dir, and the next kill waits
until all five agree on a leader.

Polling adds up to one poll round (about a millisecond per survivor on loopback) to etcd's
figures, where meshelect's come from the agents' own log stamps. Never part of the test run
by default; the product does not need etcd.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from functools import partial
from typing import Any

from testkit.tools import require_tool
from testkit.waiting import poll_until
from tools.bench.usage import percentile

MEMBERS = 5
HEARTBEAT_MS = 50
ELECTION_MS = 250
POLL_TIMEOUT_S = 0.2  # one status call; a dead member refuses at once on loopback


def require() -> str:
    """The etcd program's path; MissingTool without it."""
    return require_tool("etcd", "apt-get install etcd-server")


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EtcdCluster:
    """``members`` etcd processes on loopback; ``close()`` kills them and deletes the data."""

    def __init__(
        self,
        members: int = MEMBERS,
        heartbeat_ms: int = HEARTBEAT_MS,
        election_ms: int = ELECTION_MS,
    ) -> None:
        self.etcd = require()
        self.names = ["m%d" % i for i in range(1, members + 1)]
        ports = _free_ports(2 * members)
        self.client = dict(zip(self.names, ports[:members], strict=True))
        self.peer = dict(zip(self.names, ports[members:], strict=True))
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.tmp = tempfile.TemporaryDirectory(prefix="meshelect-etcd-")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ids: dict[str, str] = {}  # name -> raft member id (as the status says it)

    def start(self, name: str) -> None:
        cluster = ",".join("%s=http://127.0.0.1:%d" % (n, self.peer[n]) for n in self.names)
        client = "http://127.0.0.1:%d" % self.client[name]
        peer = "http://127.0.0.1:%d" % self.peer[name]
        argv = [
            self.etcd, "--name", name, "--data-dir", os.path.join(self.tmp.name, name),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--initial-cluster-token", "meshelect-bench",
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--log-level", "error",
        ]  # fmt: skip
        log = open(os.path.join(self.tmp.name, name + ".log"), "ab")  # noqa: SIM115 (the child holds it)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def open(self) -> EtcdCluster:
        for name in self.names:
            self.start(name)
        if poll_until(lambda: self.agreed(self.names), 30) is None:
            self.close()
            raise RuntimeError("etcd: no leader agreed within 30 s")
        return self

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        self.tmp.cleanup()

    def status(self, name: str) -> dict[str, Any] | None:
        """The member's ``/v3/maintenance/status`` answer, or None (down, or no answer)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.client[name], timeout=POLL_TIMEOUT_S)
        try:
            conn.request("POST", "/v3/maintenance/status", body=b"{}")
            reply = conn.getresponse()
            if reply.status != 200:
                return None
            answer: dict[str, Any] = json.loads(reply.read())
            return answer
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def agreed(self, names: list[str]) -> str | None:
        """The leader name every member of ``names`` reports, or None."""
        leaders = set()
        for name in names:
            answer = self.status(name)
            if answer is None:
                return None
            self.ids[name] = str(answer.get("header", {}).get("member_id", ""))
            leaders.add(str(answer.get("leader", "0")))
        if len(leaders) != 1:
            return None
        leader_id = leaders.pop()
        return next((n for n, i in self.ids.items() if i == leader_id), None)


def failover(kills: int, log: bool = True) -> list[float]:
    """Seconds from each kill -9 of the raft leader until every survivor names a new one."""
    times: list[float] = []
    cluster = EtcdCluster().open()
    try:
        for round_no in range(kills):
            leader = poll_until(lambda: cluster.agreed(cluster.names), 30, 0.02)
            if leader is None:
                break
            survivors = [n for n in cluster.names if n != leader]
            killed_at = time.monotonic()
            cluster.kill(leader)
            new = poll_until(partial(_new_leader, cluster, survivors, leader), 30, 0.0)
            if new is None:
                break
            times.append(time.monotonic() - killed_at)
            if log:
                print(
                    "etcd kill %2d: %s -> %s  %.0f ms"
                    % (round_no + 1, leader, new, times[-1] * 1000),
                    flush=True,
                )
            cluster.start(leader)
    finally:
        cluster.close()
    return times


def _new_leader(cluster: EtcdCluster, survivors: list[str], old: str) -> str | None:
    leader = cluster.agreed(survivors)
    return leader if leader is not None and leader != old else None


def compare(kills: int, ours: dict[str, Any] | None) -> str:
    """Run etcd's failovers and say how they compare with meshelect's row at 50 ms."""
    times = failover(kills)
    lines = ["etcd %d members, heartbeat/election %d/%d ms" % (MEMBERS, HEARTBEAT_MS, ELECTION_MS)]
    if not times:
        return lines[0] + ": no failover measured"
    med, p99 = statistics.median(times), percentile(times, 0.99)
    lines.append(
        "  kill -> all survivors name a new leader: median %.0f ms  p99 %.0f ms  (%d kills)"
        % (med * 1000, p99 * 1000, len(times))
    )
    follow = (ours or {}).get("follow") or []
    if follow:
        our_med, our_p99 = statistics.median(follow), percentile(follow, 0.99)
        lines.append(
            "  meshelect at 50 ms: median %.0f ms  p99 %.0f ms; etcd / meshelect: "
            "median %.2f  p99 %.2f" % (our_med * 1000, our_p99 * 1000, med / our_med, p99 / our_p99)
        )
    else:
        lines.append("  (no meshelect run at 50 ms to compare with: add 50 to --heartbeat-ms)")
    return "\n".join(lines)
