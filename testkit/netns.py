"""Several hosts on one machine: network namespaces joined by a bridge in its own namespace.

    from testkit.netns import Lab

    with Lab(prefix="mi-", subnet="10.91.0.0/24", hosts=3) as lab:
        proc = lab.run(1, [sys.executable, "-m", "agent", "agent", ...], stdout=subprocess.PIPE)
        lab.exec(2, ["ping", "-c1", lab.address(1)])   # run to completion, CompletedProcess
        lab.partition([[1, 2], [3]])    # 3 is cut off from 1 and 2
        lab.heal()
        lab.loss(2, 20)                 # drop 20% of host 2's frames, each receiver's copy apart
        lab.loss(2, 20, per_frame=True) # drop 20% of host 2's frames, for every receiver at once
        lab.loss(2, 0)
        lab.frames_sent()               # {host: frames it sent into the bridge so far}

Hosts are numbered from 1; host ``i`` is namespace ``<prefix><run>-h<i>`` with address
``<subnet> + i`` on its interface ``veth0``, a multicast route (224.0.0.0/4) and ``lo`` up.
The bridge ``br0`` lives in namespace ``<prefix><run>-br``, with one port ``p<i>`` per host.
``<run>`` is this process's pid in base 36, so two runs (a test run and a bench, two developers)
never share a namespace even with the same prefix. Nothing
is created in the root namespace (veths are created directly inside their namespaces), and
there are no default routes, so no traffic can leave the lab.

Partitions and loss are nftables rules in the bridge namespace (``table bridge lab``): silent
drops, interfaces and routes stay intact (``ip link set down`` would make senders fail at once
and take the multicast route with it). Loss comes in two shapes: per link (the forward hook
runs once per copy of a flooded multicast frame, so each receiver misses its copy on its own)
and per frame (the prerouting hook runs once per frame, before the bridge floods it, so every
receiver misses the same frame, as when a sender's radio loses it; the kernel here may have no
netem, and this needs none).

Teardown (``close()``, also on exceptions) kills every process still running in the lab's
namespaces and deletes them; creating a Lab first removes stale namespaces left with the same
prefix by a run whose process is gone (a crash, kill -9). Labs of live processes are left alone.
Use your own prefix and subnet, and only one Lab per prefix at a time within one process.
Needs root (CI runs as root) plus ``ip`` (iproute2) and ``nft`` (nftables).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from testkit.tools import find_tool, require_root, require_tool

TEN_NET = ipaddress.IPv4Network("10.0.0.0/8")
MULTICAST_ROUTE = "224.0.0.0/4"
HOST_IFACE = "veth0"
KILL_GRACE_S = 3.0  # after SIGTERM, how long processes get before SIGKILL
COMMAND_TIMEOUT_S = 10.0  # bound on every ip/nft call


class LabError(RuntimeError):
    """A namespace, link or nftables command failed (the message has its stderr)."""


def require_netns() -> None:
    """``MissingTool`` unless this process can build a Lab."""
    require_root("network namespaces")
    require_tool("ip", "apt-get install iproute2")
    require_tool("nft", "apt-get install nftables")


class Lab:
    """N hosts on one bridge, each host a network namespace. See the module docstring."""

    def __init__(self, prefix: str, subnet: str, hosts: int = 2) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,11}", prefix):
            raise ValueError("prefix must be short lowercase letters/digits/dashes: %r" % prefix)
        network = ipaddress.ip_network(subnet, strict=True)
        inside_ten = isinstance(network, ipaddress.IPv4Network) and network.subnet_of(TEN_NET)
        if not inside_ten:
            raise ValueError("lab subnets must lie inside 10.0.0.0/8: %r" % subnet)
        max_hosts = min(network.num_addresses - 2, 250)  # bridge port names stay short
        if not 1 <= hosts <= max_hosts:
            raise ValueError("hosts must be between 1 and %d" % max_hosts)
        self.prefix = prefix
        self.network = network
        self.hosts = list(range(1, hosts + 1))
        self.run_prefix = "%s%s-" % (prefix, run_tag(os.getpid()))
        self.bridge_ns = self.run_prefix + "br"
        self.processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._groups: list[list[int]] | None = None
        self._loss: dict[int, int] = {}
        self._frame_loss: dict[int, int] = {}
        self._ip = find_tool("ip") or "ip"
        self._nft = find_tool("nft") or "nft"

    # -- names and addresses ---------------------------------------------------------------------
    def ns(self, host: int) -> str:
        """Namespace name of ``host``."""
        self._check_host(host)
        return "%sh%d" % (self.run_prefix, host)

    def address(self, host: int) -> str:
        """IPv4 address of ``host`` (``subnet + host``)."""
        self._check_host(host)
        return str(self.network.network_address + host)

    def port(self, host: int) -> str:
        """Name of ``host``'s port on the bridge (in the bridge namespace)."""
        self._check_host(host)
        return "p%d" % host

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> Lab:
        require_netns()
        remove_stale(self.prefix, self._ip)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces. Safe to call twice."""
        for proc in self.processes:
            stop_process(proc)
        self.processes.clear()
        for name in reversed(self._created):
            kill_namespace_processes(name, self._ip)
            subprocess.run(
                [self._ip, "netns", "del", name],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        self._created.clear()

    def __enter__(self) -> Lab:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running things in hosts -------------------------------------------------------------------
    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``'s namespace."""
        return [self._ip, "netns", "exec", self.ns(host), *argv]

    def wrapper(self, host: int, program: str, path: str) -> str:
        """Write an executable script at ``path`` that runs ``program`` with its arguments
        inside ``host``, and return ``path``: for a tool that starts the program itself, as
        Playwright starts Chromium (its pipes pass through ``ip netns exec``). A process
        it leaves behind is killed at teardown, as every process of the lab's namespaces."""
        with open(path, "w") as f:
            f.write(
                '#!/bin/sh\nexec %s "$@"\n'
                % " ".join(map(shlex.quote, self.command(host, [program])))
            )
        os.chmod(path, 0o755)
        return path

    def run(self, host: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host`` (``subprocess.Popen`` keywords pass through).

        The process gets its own session, is tracked, and is killed at teardown if still
        running. stdin defaults to /dev/null so a child never waits on the test's terminal.
        """
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(host, argv), **popen_kwargs)
        self.processes.append(proc)
        return proc

    def exec(
        self, host: int, argv: Sequence[str], timeout: float = 30.0, **run_kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` to completion; output captured as text, not checked."""
        run_kwargs.setdefault("capture_output", True)
        run_kwargs.setdefault("text", True)
        run_kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.command(host, argv), timeout=timeout, check=False, **run_kwargs)

    # -- faults ------------------------------------------------------------------------------------
    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Only hosts of the same group can reach each other; a host named in no group is cut
        off from all. Replaces any earlier partition; loss settings stay."""
        seen: set[int] = set()
        normalised: list[list[int]] = []
        for group in groups:
            members = sorted(set(group))
            for host in members:
                self._check_host(host)
                if host in seen:
                    raise ValueError("host %d is in two groups" % host)
                seen.add(host)
            normalised.append(members)
        normalised += [[host] for host in self.hosts if host not in seen]
        self._groups = normalised
        self._apply_rules()

    def heal(self) -> None:
        """Remove the partition (loss settings stay)."""
        self._groups = None
        self._apply_rules()

    def loss(self, host: int, percent: int, per_frame: bool = False) -> None:
        """Drop ``percent`` % of the frames ``host`` sends, at random (0 removes the loss).

        Dropped on the bridge, not at the sender, so the sender's ``sendto`` still succeeds.
        ``per_frame``: a dropped frame is lost for every receiver (a sender's loss), instead of
        each receiver's copy being dropped on its own (a link's loss). One shape per host.
        """
        self._check_host(host)
        if not 0 <= percent <= 100:
            raise ValueError("percent must be 0..100")
        self._loss.pop(host, None)
        self._frame_loss.pop(host, None)
        if percent:
            (self._frame_loss if per_frame else self._loss)[host] = int(percent)
        self._apply_rules()

    def frames_sent(self) -> dict[int, int]:
        """Frames each host has sent into the bridge so far (its port's receive counter), the
        ones the loss rules drop included: what went on the wire."""
        listed = subprocess.run(
            [self._ip, "-n", self.bridge_ns, "-s", "-j", "link", "show"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if listed.returncode != 0:
            raise LabError("ip -s link show failed: %s" % listed.stderr.strip())
        by_port = {
            link.get("ifname"): int(link.get("stats64", {}).get("rx", {}).get("packets", 0))
            for link in json.loads(listed.stdout or "[]")
        }
        return {host: by_port.get(self.port(host), 0) for host in self.hosts}

    def ruleset(self) -> str:
        """The nftables script for the current partition and loss (for logs and debugging)."""
        rules: list[str] = []
        if self._groups is not None:
            group_of = {host: i for i, group in enumerate(self._groups) for host in group}
            for a in self.hosts:
                for b in self.hosts:
                    if group_of[a] != group_of[b]:
                        rules.append(
                            'iifname "%s" oifname "%s" drop' % (self.port(a), self.port(b))
                        )
        rules += [self._drop(host, self._loss[host]) for host in sorted(self._loss)]
        # Per-frame loss: once per frame, before the bridge floods it to the other ports.
        early = [self._drop(host, self._frame_loss[host]) for host in sorted(self._frame_loss)]
        # "table + delete + table" makes the replacement atomic and lets delete never fail.
        body = "\n".join("    " + rule for rule in rules)
        prerouting = ""
        if early:
            prerouting = (
                "  chain prerouting {\n"
                "    type filter hook prerouting priority 0; policy accept;\n"
                "%s\n"
                "  }\n" % "\n".join("    " + rule for rule in early)
            )
        return (
            "table bridge lab\n"
            "delete table bridge lab\n"
            "table bridge lab {\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            "%s\n"
            "  }\n"
            "%s"
            "}\n" % (body, prerouting)
        )

    def _drop(self, host: int, percent: int) -> str:
        # nft compares `numgen random mod 100` with 0..99 only: 100% is a plain drop.
        chance = "" if percent >= 100 else "numgen random mod 100 < %d " % percent
        return 'iifname "%s" %sdrop' % (self.port(host), chance)

    # -- internals ---------------------------------------------------------------------------------
    def _check_host(self, host: int) -> None:
        if host not in self.hosts:
            raise ValueError("no host %r in this lab (hosts are %s)" % (host, self.hosts))

    def _sh(self, *argv: str, stdin: str | None = None) -> None:
        result = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise LabError("%s failed: %s" % (" ".join(argv), result.stderr.strip()))

    def _add_ns(self, name: str) -> None:
        self._sh(self._ip, "netns", "add", name)
        self._created.append(name)

    def _build(self) -> None:
        ip, br = self._ip, self.bridge_ns
        self._add_ns(br)
        self._sh(ip, "-n", br, "link", "add", "br0", "type", "bridge")
        # Without snooping the bridge floods multicast to every port, as a Wi-Fi AP would.
        self._sh(ip, "-n", br, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        self._sh(ip, "-n", br, "link", "set", "br0", "up")
        prefix_len = str(self.network.prefixlen)
        for host in self.hosts:
            ns, port = self.ns(host), self.port(host)
            self._add_ns(ns)
            # Created directly inside the namespaces: no name ever exists in the root namespace,
            # so labs of different teammates cannot collide on interface names.
            self._sh(
                ip, "link", "add", "name", HOST_IFACE, "netns", ns,
                "type", "veth", "peer", "name", port, "netns", br,
            )  # fmt: skip
            self._sh(ip, "-n", br, "link", "set", port, "master", "br0")
            self._sh(ip, "-n", br, "link", "set", port, "up")
            self._sh(ip, "-n", ns, "link", "set", "lo", "up")
            self._sh(
                ip, "-n", ns, "addr", "add", "%s/%s" % (self.address(host), prefix_len),
                "dev", HOST_IFACE,
            )  # fmt: skip
            self._sh(ip, "-n", ns, "link", "set", HOST_IFACE, "up")
            # Plain multicast sockets need a route for 224/4 (there is no default route).
            self._sh(ip, "-n", ns, "route", "add", MULTICAST_ROUTE, "dev", HOST_IFACE)

    def _apply_rules(self) -> None:
        if not self._created:
            raise LabError("the lab is not open")
        self._sh(
            self._ip, "netns", "exec", self.bridge_ns, self._nft, "-f", "-", stdin=self.ruleset()
        )


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL it if it does not exit in time."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Not a group leader (started without start_new_session): signal the process.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            proc.wait(KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def kill_namespace_processes(name: str, ip: str = "ip") -> None:
    """SIGKILL whatever still runs inside namespace ``name`` (it belongs to the lab)."""
    listed = subprocess.run(
        [ip, "netns", "pids", name],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    pids = [int(pid) for pid in listed.stdout.split() if pid.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Bounded wait so the namespace is really empty before it is deleted.
    deadline = time.monotonic() + KILL_GRACE_S
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if is_alive(pid)]
        if pids:
            time.sleep(0.01)


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def run_tag(pid: int) -> str:
    """``pid`` in base 36: the part of a Lab's names that says which process made it."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    tag = ""
    while True:
        pid, digit = divmod(pid, 36)
        tag = digits[digit] + tag
        if pid == 0:
            return tag


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str, ip: str = "ip") -> list[str]:
    """Delete namespaces of Labs with ``prefix`` whose process is gone (left by a crashed run)."""
    listed = subprocess.run(
        [ip, "netns", "list"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    pattern = re.compile(r"%s([0-9a-z]{1,6})-(br|h\d+)" % re.escape(prefix))
    stale = []
    for line in listed.stdout.splitlines():
        name = line.split(" ", 1)[0]
        match = pattern.fullmatch(name)
        if match and not _process_alive(int(match.group(1), 36)):
            kill_namespace_processes(name, ip)
            subprocess.run(
                [ip, "netns", "del", name],
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
            stale.append(name)
    return stale
