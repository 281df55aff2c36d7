"""A shared board farm on labgrid's coordinator: places, locks, and a virtual farm host.

labgrid shares boards between people and CI runners with a coordinator
(``labgrid-coordinator``), exporters that publish the resources plugged into their host
(``labgrid-exporter``), and places that group resources and are locked by one user at a time.
This module drives those real programs; it adds no protocol of its own:

- ``Coordinator``, ``Exporter``: the two daemons as child processes (tests: on loopback,
  free ports, a temporary state folder).
- ``client(coordinator, *args)``: one ``labgrid-client`` call.
- ``create_place``: a place matching an exporter's group, tagged ``mesh=<place>``.
- ``locked(coordinator, place)``: reserve the place and wait for it (labgrid's reservations:
  a second session waits while the first holds it), lock it, and unlock and cancel at the end.
- ``exporter_config(bench, group)``: a virtual bench's slots, gateway and broker as exporter
  resources (with their namespace, address and folder filled in).

    python -m hil.farm virtual-host --coordinator HOST:PORT --place virtual-3   # a farm host
    python -m hil.farm run --coordinator HOST:PORT --place virtual-3 -- pytest --lg-env ...

The environment a farm's users run is ``hil/envs/farm-virtual-3.yaml``: each board is a
``RemotePlace`` target. See hil/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from hil.bench import Bench
from testkit.broker import free_port
from testkit.netns import stop_process
from testkit.tools import find_tool
from testkit.waiting import poll_until

START_S = 30.0  # bound on a daemon becoming ready
CLIENT_TIMEOUT_S = 60.0  # bound on one labgrid-client call (not on waiting for a lock)
LOCK_WAIT_S = 600.0  # bound on waiting for a place another session holds


class FarmError(RuntimeError):
    """A farm daemon or client call failed (the message has its output)."""


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise FarmError("%s is not installed (pip install 'meshelect[hil]')" % name)
    return path


class _Daemon:
    """A child process whose output goes to a log file; ``ready`` is a line it prints."""

    def __init__(self, argv: list[str], log: Path, cwd: Path, ready: str) -> None:
        self.argv = argv
        self.log = log
        self.cwd = cwd
        self.ready = ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not poll_until(self._ready_or_dead, START_S, 0.05) or not self.running:
            text = self.output()[-2000:]
            self.stop()
            raise FarmError("%s did not start:\n%s" % (Path(self.argv[0]).name, text))

    def _ready_or_dead(self) -> bool:
        return not self.running or self.ready in self.output()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class Coordinator(_Daemon):
    """``labgrid-coordinator`` on ``host:port`` (a free loopback port by default); its state
    (places.yaml, resources.yaml) lives in ``folder``."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.address = "%s:%d" % (host, self.port)
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(
            [_tool("labgrid-coordinator"), "--listen", self.address],
            folder / "coordinator.log",
            folder,
            "listening on",
        )


class Exporter(_Daemon):
    """``labgrid-exporter`` publishing ``config`` to ``coordinator`` as exporter ``name``."""

    def __init__(self, config: Path, coordinator: str, name: str, folder: Path) -> None:
        self.name = name
        argv = [
            _tool("labgrid-exporter"),
            "--coordinator", coordinator,
            "--name", name,
            "--hostname", "127.0.0.1",
            str(config),
        ]  # fmt: skip
        super().__init__(
            argv,
            folder / ("exporter-%s.log" % name),
            folder,
            "Exporter ready",
        )


def client(
    coordinator: str,
    *args: str,
    token: str | None = None,
    timeout: float = CLIENT_TIMEOUT_S,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``labgrid-client -x coordinator ARGS``; ``FarmError`` on failure if ``check``."""
    env = dict(os.environ)
    env.pop("LG_ENV", None)  # the client's own commands need no environment file
    if token is not None:
        env["LG_TOKEN"] = token
    argv = [_tool("labgrid-client"), "-x", coordinator, *args]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FarmError(
            "labgrid-client %s: no answer in %.0f s" % (" ".join(args), timeout)
        ) from None
    if check and done.returncode != 0:
        raise FarmError(
            "labgrid-client %s failed (exit %d): %s"
            % (" ".join(args), done.returncode, (done.stderr or done.stdout).strip()[-1000:])
        )
    return done


def create_place(coordinator: str, place: str, exporter: str, group: str) -> None:
    """A place holding every resource of ``exporter``'s ``group``, tagged ``mesh=place``."""
    client(coordinator, "-p", place, "create")
    client(coordinator, "-p", place, "add-match", "%s/%s/*" % (exporter, group))
    client(coordinator, "-p", place, "set-tags", "mesh=%s" % place)


def wait_resources(coordinator: str, place: str, count: int) -> None:
    """Wait until the exporter's resources reached the coordinator (a lock checks them)."""

    def arrived() -> bool:
        done = client(coordinator, "-p", place, "show", check=False)
        return done.returncode == 0 and done.stdout.count("Matching resource") >= count

    if not poll_until(arrived, START_S, 0.2):
        shown = client(coordinator, "-p", place, "show", check=False)
        raise FarmError("place %s: resources did not arrive:\n%s" % (place, shown.stdout))


@contextlib.contextmanager
def locked(coordinator: str, place: str, wait_s: float = LOCK_WAIT_S) -> Iterator[str]:
    """Hold ``place`` for the block: reserve it by its tag and wait while another session
    holds it, lock it, then unlock and cancel the reservation (also on errors)."""
    done = client(coordinator, "reserve", "--wait", "--shell", "mesh=%s" % place, timeout=wait_s)
    token = ""
    for line in done.stdout.splitlines():
        if line.startswith("export LG_TOKEN="):
            token = line.split("=", 1)[1].strip()
    if not token:
        raise FarmError("reserve gave no token:\n%s" % done.stdout)
    try:
        client(coordinator, "-p", "+", "lock", token=token)
        try:
            yield token
        finally:
            client(coordinator, "-p", "+", "unlock", token=token, check=False)
    finally:
        client(coordinator, "cancel-reservation", token, check=False)


def exporter_config(bench: Bench, group: str, interpreter: str = "micropython") -> str:
    """The exporter's YAML for a virtual bench: one group, a resource per slot, the gateway
    (and the broker in MQTT mode), with their namespaces and folders filled in."""
    lines = ["%s:" % group]
    for host in range(1, bench.boards + 1):
        slot = bench.slot(host)
        lines += [
            "  vb-%d:" % host,
            "    cls: MicroPythonUnixPort",
            "    host: %d" % host,
            "    netns: %s" % slot.netns,
            "    address: %s" % slot.address,
            "    folder: %s" % slot.folder,
            "    interpreter: %s" % interpreter,
        ]
    lines += [
        "  gateway:",
        "    cls: MeshGateway",
        "    url: %s" % bench.gateway_url,
        "    netns: %s" % bench.gateway_netns,
    ]
    if bench.broker_address:
        lines += ["  broker:", "    cls: MeshBroker", "    address: %s" % bench.broker_address]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- CLI


def _virtual_host(args: argparse.Namespace) -> int:
    """Build a virtual bench, export it, create its place; run until interrupted."""
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="meshelect-farm-"))
    bench = Bench.from_spec(folder / "bench", args)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with bench:
        config = folder / "exporter.yaml"
        config.write_text(exporter_config(bench, args.place))
        exporter = Exporter(config, args.coordinator, args.exporter, folder)
        try:
            exporter.start()
            with contextlib.suppress(FarmError):  # already there from an earlier run
                create_place(args.coordinator, args.place, args.exporter, args.place)
            print(
                "virtual farm host: place %s on %s; Ctrl-C to stop"
                % (args.place, args.coordinator),
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while not stop and exporter.running:
                    time.sleep(0.5)
        finally:
            exporter.stop()
    if not args.workdir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    """Hold the place while a command runs (e.g. pytest); its exit status is ours."""
    command: Sequence[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("hil.farm run: no command given", file=sys.stderr)
        return 2
    with locked(args.coordinator, args.place, args.wait):
        env = dict(os.environ, LG_COORDINATOR=args.coordinator)
        return subprocess.call(list(command), env=env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.farm", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    host = sub.add_parser("virtual-host", help="export a virtual bench as a place")
    run = sub.add_parser("run", help="run a command while holding a place")
    for p in (host, run):
        p.add_argument("--coordinator", required=True, metavar="HOST:PORT")
        p.add_argument("--place", required=True)
    host.add_argument("--exporter", default="virtual-host", help="exporter name")
    host.add_argument("--boards", type=int, default=3)
    host.add_argument("--mesh", default="hil")
    host.add_argument("--mesh-key", default="68696c2d6c61622d6b6579")
    host.add_argument("--transport", choices=("udp", "mqtt"), default="udp")
    host.add_argument("--prefix", default="mf-")
    host.add_argument("--subnet", default="10.98.0.0/24")
    host.add_argument("--workdir", default=None)
    run.add_argument("--wait", type=float, default=LOCK_WAIT_S, help="seconds to wait for it")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        return _virtual_host(args) if args.action == "virtual-host" else _run(args)
    except FarmError as exc:
        print("hil.farm: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
