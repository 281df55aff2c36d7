"""A virtual bench: the "hardware" a virtual lab's boards are plugged into.

On a real bench the boards, the USB hub, the Wi-Fi and the gateway exist before any test runs.
A virtual bench makes their stand-ins on this machine: one network namespace per board slot,
one for the gateway (and one for an MQTT broker in MQTT mode), joined by a bridge
(``testkit.netns.Lab``), an empty folder per slot (the board's flash), the real gateway
process and, in MQTT mode, a real Mosquitto. Nothing runs on a slot until a board's power
driver starts the firmware there (``hil.drivers.unixboard``).

Host numbers: slots ``1..boards``, the gateway ``boards + 1``, the broker ``boards + 2``.
The gateway's HTTP API listens on its own namespace's loopback (reached with
``hil.nsthread``), so nothing is created in the root namespace. Needs root, iproute2 and
nftables.

Two users: ``hil.drivers.bench.VirtualBenchDriver`` (a local environment builds its bench
when a test first needs it) and ``hil.farm`` (a farm's bench, built before its exporter
publishes the slots as resources).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.broker import Mosquitto
from testkit.netns import Lab, require_netns
from testkit.tools import SOURCE_ROOT, MissingTool, python_env

GATEWAY_HTTP_PORT = 8470  # on the gateway namespace's own loopback: no clash possible
BROKER_PORT = 1884  # inside the broker's namespace (1883 is left to a system broker)
TRANSPORTS = ("udp", "mqtt")


class BenchError(RuntimeError):
    """The bench could not be built (the message says what is missing or failed)."""


@dataclass(frozen=True)
class Slot:
    """Where one virtual board lives: its namespace, its address there, its flash folder."""

    host: int
    netns: str
    address: str
    folder: str


class Bench:
    """``boards`` slots, a gateway (and a broker in MQTT mode) in namespaces; see the module
    docstring. ``open()`` builds it, ``close()`` removes everything (also after a failure)."""

    def __init__(
        self,
        workdir: Path,
        boards: int,
        mesh: str,
        mesh_key: str = "",
        transport: str = "udp",
        prefix: str = "mh-",
        subnet: str = "10.96.0.0/24",
        gateway_args: tuple[str, ...] = (),
    ) -> None:
        if transport not in TRANSPORTS:
            raise BenchError("transport: expected one of %s, got %r" % (TRANSPORTS, transport))
        if boards < 1:
            raise BenchError("boards: expected at least 1, got %r" % boards)
        self.workdir = workdir
        self.boards = boards
        self.mesh = mesh
        self.mesh_key = mesh_key
        self.transport = transport
        self.gateway_args = tuple(gateway_args)
        self.gateway_host = boards + 1
        self.broker_host = boards + 2 if transport == "mqtt" else 0
        self.netlab = Lab(prefix, subnet, hosts=boards + (2 if transport == "mqtt" else 1))
        self.broker: Mosquitto | None = None
        self.gateway: subprocess.Popen[Any] | None = None
        self.is_open = False

    @classmethod
    def from_spec(cls, workdir: Path, spec: Any, gateway_args: tuple[str, ...] = ()) -> Bench:
        """A bench from anything with ``boards``, ``mesh``, ``mesh_key``, ``transport``,
        ``prefix`` and ``subnet`` (a ``VirtualBench`` resource, command-line options)."""
        return cls(
            workdir,
            boards=spec.boards,
            mesh=spec.mesh,
            mesh_key=spec.mesh_key,
            transport=spec.transport,
            prefix=spec.prefix,
            subnet=spec.subnet,
            gateway_args=gateway_args,
        )

    # -- what tests and drivers need to know -----------------------------------------------
    def slot(self, host: int) -> Slot:
        if not 1 <= host <= self.boards:
            raise BenchError("no board slot %r on this bench (slots 1..%d)" % (host, self.boards))
        folder = self.workdir / ("slot-%d" % host)
        return Slot(host, self.netlab.ns(host), self.netlab.address(host), str(folder))

    @property
    def gateway_url(self) -> str:
        return "http://127.0.0.1:%d" % GATEWAY_HTTP_PORT

    @property
    def gateway_netns(self) -> str:
        return self.netlab.ns(self.gateway_host)

    @property
    def gateway_log(self) -> Path:
        return self.workdir / "gateway.log"

    @property
    def broker_address(self) -> str:
        """``host:port`` of the broker as the boards reach it ("" on a UDP bench)."""
        if not self.broker_host:
            return ""
        return "%s:%d" % (self.netlab.address(self.broker_host), BROKER_PORT)

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> Bench:
        if self.is_open:
            return self
        try:
            require_netns()
        except MissingTool as exc:
            raise BenchError("virtual bench: %s" % exc) from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A kept workdir may hold an earlier run: blank flash, an empty gateway database (its
        # fencing terms would refuse the new mesh's batches).
        for host in range(1, self.boards + 1):
            shutil.rmtree(self.slot(host).folder, ignore_errors=True)
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm", "gateway.log"):
            (self.workdir / name).unlink(missing_ok=True)
        self.netlab.open()
        self.is_open = True
        try:
            for host in range(1, self.boards + 1):
                Path(self.slot(host).folder).mkdir(parents=True)
            if self.broker_host:
                self.broker = Mosquitto(
                    port=BROKER_PORT,
                    host=self.netlab.address(self.broker_host),
                    netns=self.netlab.ns(self.broker_host),
                ).start()
            self._start_gateway()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the broker, kill everything in the namespaces, delete them. Safe twice."""
        if self.broker is not None:
            self.broker.close()
            self.broker = None
        self.netlab.close()
        self.gateway = None
        self.is_open = False

    def __enter__(self) -> Bench:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_gateway(self) -> None:
        address = self.netlab.address(self.gateway_host)
        argv = [
            sys.executable, "-m", "gateway",
            "--db", str(self.workdir / "gateway.db"),
            "--http-host", "127.0.0.1",
            "--http-port", str(GATEWAY_HTTP_PORT),
            "--log-level", "warning",
        ]  # fmt: skip
        if self.transport == "mqtt":
            host, port = self.broker_address.split(":")
            argv += ["--no-udp", "--no-mdns", "--mqtt-host", host, "--mqtt-port", port]
        else:
            argv += ["--udp-host", address, "--mdns-interface", address]
        if self.mesh_key:
            argv += ["--mesh-key", "%s=%s" % (self.mesh, self.mesh_key)]
        argv += list(self.gateway_args)
        with self.gateway_log.open("ab") as log:
            self.gateway = self.netlab.run(
                self.gateway_host,
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=SOURCE_ROOT,
                env=python_env(),
            )

    def gateway_log_tail(self, chars: int = 2000) -> str:
        try:
            return self.gateway_log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
