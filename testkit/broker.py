"""A real Mosquitto broker per test, on a free loopback port, from a config in a temp folder.

    from testkit.broker import Mosquitto

    with Mosquitto() as broker:            # or the `mosquitto` fixture from tests/conftest.py
        client.connect(broker.host, broker.port)
        broker.restart()                   # same port; sessions and retained messages are gone
        broker.kill()                      # SIGKILL: clients see a dead broker (last wills...)
        broker.start()

``config`` adds lines to the generated config (e.g. a TLS listener or ``password_file``);
``broker.folder`` is the temp folder to put such files in. ``netns="name"`` starts the broker
inside an existing network namespace (bind ``host`` to an address of that namespace).

Never uses port 1883 (the distribution's own service may hold it). Readiness is taken from the
broker's own log ("... running"), plus a TCP connect when the broker is on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from testkit.tools import require_tool

START_TIMEOUT_S = 10.0  # mosquitto listens within ~20 ms; this only bounds a broken start
STOP_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """The broker did not start; the message includes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice, never 1883)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port != 1883:
            return port


class Mosquitto:
    """One mosquitto process. ``host``/``port`` stay the same across ``restart()``."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: str = "",
        netns: str | None = None,
    ) -> None:
        if port == 1883:
            raise ValueError("port 1883 belongs to the system's broker; use another")
        self.executable = require_tool("mosquitto", "apt-get install mosquitto")
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.extra_config = config
        self.netns = netns
        self._tmp = tempfile.TemporaryDirectory(prefix="meshelect-mosquitto-")
        self.folder = Path(self._tmp.name)
        self.config_path = self.folder / "mosquitto.conf"
        self.log_path = self.folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Mosquitto:
        """Start the broker and wait until it accepts connections. Returns self."""
        if self.running:
            return self
        # A kernel-chosen port can be taken by someone else before mosquitto binds it: then
        # pick another (only if the caller did not ask for a specific port).
        for _attempt in range(5):
            self._spawn()
            problem = self._wait_ready()
            if problem is None:
                return self
            self._reap()
            if "Address already in use" in problem and not self._fixed_port:
                self.port = free_port()
                continue
            break
        raise BrokerError("mosquitto did not start on %s:%d:\n%s" % (self.host, self.port, problem))

    def stop(self) -> None:
        """Stop the broker gracefully (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def kill(self) -> None:
        """Kill the broker abruptly (SIGKILL), as a crash or power cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self._reap()

    def restart(self) -> Mosquitto:
        """Stop and start again on the same host and port."""
        self._fixed_port = True  # clients were told this port: keep it
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and delete its temp folder."""
        self.stop()
        self._tmp.cleanup()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """What the broker has logged so far (useful in assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Mosquitto(%s:%d, running=%s)" % (self.host, self.port, self.running)

    # -- internals -----------------------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            "listener %d %s" % (self.port, self.host),
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",  # unbuffered, unlike stdout: readiness is read from the log
            "log_type all",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the `mosquitto` user, which cannot read
            # files in a root-owned temp folder.
            lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")

    def _spawn(self) -> None:
        self._write_config()
        argv = [self.executable, "-c", str(self.config_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _wait_ready(self) -> str | None:
        """None once the broker is up; else what went wrong (its log)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self.log() or "exited with status %d" % self.process.returncode
            if " running" in self.log() and (self.netns or self._accepts()):
                return None
            time.sleep(0.005)
        return "not ready after %.0f s; log:\n%s" % (START_TIMEOUT_S, self.log())

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
