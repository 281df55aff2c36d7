"""Drivers: the active code that acts on resources (``hil.resources``).

Each job has a small base class (the "protocol", as labgrid calls it) and one implementation
per kind of board:

| job | base | real board | virtual board |
|---|---|---|---|
| put the firmware on the board | ``FirmwareDriver`` | ``EsptoolFirmwareDriver`` (esptool + mpremote via ``tools.firmware``) | ``UnixFirmwareDriver`` (a folder with the build and config.json) |
| power | ``PowerDriver`` | ``CommandPowerDriver`` (uhubctl, a relay CLI...) | ``ProcessPowerDriver`` (start / SIGKILL = power loss) |
| console | ``ConsoleDriver`` over ``SerialLines`` | | ``ConsoleDriver`` over ``FileLines`` |
| gateway API | ``GatewayDriver`` | | |

Tests of the harness use the fakes in ``hil.fake`` instead.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from hil.nsthread import NamespaceThread
from hil.resources import BoardSpec, Gateway, PowerPort, SerialPort
from testkit.waiting import poll_until
from tools import firmware as firmware_tool

POLL_S = 0.05  # how often waits look again (console lines, gateway state)
COMMAND_TIMEOUT_S = 30.0  # bound on one power command
HTTP_TIMEOUT_S = 5.0
CONSOLE_KEEP_LINES = 200  # the tail kept for error messages
MAX_LINE_BYTES = 16384  # a longer "line" is noise on the serial port: dropped, counted
READINGS_LIMIT = 10000  # the gateway API's maximum page


class HilError(RuntimeError):
    """A driver could not do its job (the message says which board and why)."""


class HilTimeout(HilError):
    """Something the harness waited for did not happen in time."""


# ------------------------------------------------------------------------------------ firmware


def build_firmware(out: Path) -> tuple[dict[str, Any], str]:
    """Build the firmware into ``out`` once; returns (manifest, build hash).

    The build hash (sha256 over the manifest's file hashes) names exactly what was deployed,
    for the test report's provenance.
    """
    manifest = firmware_tool.build(out)
    return manifest, manifest_hash(manifest)


def manifest_hash(manifest: dict[str, Any]) -> str:
    parts = sorted("%s:%s" % (e["path"], e["sha256"]) for e in manifest.get("files", []))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class FirmwareDriver:
    """Puts the built firmware and the board's config on the board."""

    needs_power = False  # True: the board must be powered while installing

    def install(self) -> None:
        raise NotImplementedError


class EsptoolFirmwareDriver(FirmwareDriver):
    """A real ESP32: flash MicroPython (if the lab names an image), then deploy the build and
    config.json with mpremote (only what changed); deploy resets the board."""

    needs_power = True

    def __init__(
        self,
        board: BoardSpec,
        build_dir: Path,
        log: Callable[[str], None],
        release: Callable[[], None] | None = None,
    ) -> None:
        if board.serial is None:
            raise HilError("board %s has no serial port" % board.name)
        self.board = board
        self.port: SerialPort = board.serial
        self.build_dir = build_dir
        self.log = log
        # esptool and mpremote need the serial port: the console lets go of it first.
        self.release = release

    def install(self) -> None:
        if self.release is not None:
            self.release()
        try:
            if self.board.image:
                baud = firmware_tool.DEFAULT_BAUD  # esptool's flashing speed, not the console's
                firmware_tool.flash(
                    self.port.path, self.board.image, self.board.chip, baud, dry_run=False
                )
            firmware_tool.deploy(self.port.path, self.board.config, self.build_dir, log=self.log)
        except firmware_tool.ToolError as exc:
            raise HilError("board %s: %s" % (self.board.name, exc)) from None


class VirtualProcess:
    """The unix-port firmware process of one virtual board: its folder, log and process.

    ``spawn(argv, cwd, stdout)`` starts the process where the board lives (inside its
    namespace host); the power driver starts and kills it, the console reads ``log``.
    """

    def __init__(
        self,
        folder: Path,
        spawn: Callable[[Sequence[str], Path, IO[Any]], subprocess.Popen[Any]],
        micropython: str,
        heapsize: str | None = None,
    ) -> None:
        self.folder = folder
        self.log = folder / "console.log"
        self.spawn = spawn
        self.micropython = micropython
        self.heapsize = heapsize
        self.process: subprocess.Popen[Any] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if not (self.folder / "main.py").exists():
            raise HilError("%s holds no firmware: flash it first" % self.folder)
        argv = ["env", "MICROPYPATH=.frozen:.", self.micropython]
        if self.heapsize:
            argv += ["-X", "heapsize=%s" % self.heapsize]
        argv.append("main.py")
        # Appending: the console of a board survives its power cycles, as a serial log would.
        with self.log.open("ab") as out:
            self.process = self.spawn(argv, self.folder, out)
        self.starts += 1

    def kill(self) -> None:
        """Power loss: SIGKILL, no chance to hand over or flush anything."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(COMMAND_TIMEOUT_S)


class UnixFirmwareDriver(FirmwareDriver):
    """A virtual board: its folder gets the build (linked, as a flash holds it) and the
    device's config.json; the boot counter file stays there across power cycles."""

    def __init__(
        self, board: BoardSpec, build_dir: Path, process: VirtualProcess, address: str
    ) -> None:
        self.board = board
        self.build_dir = build_dir
        self.process = process
        self.address = address

    def device_config(self) -> dict[str, Any]:
        folder = self.process.folder
        config = firmware_tool.merge(
            self.board.config,
            {
                "status_file": str(folder / "status.json"),
                "boot_file": str(folder / "boot_count"),
                "udp": {"interface": self.address},
            },
        )
        config.setdefault("hw", {}).setdefault("kind", "unix")
        try:
            return firmware_tool.device_config(config)
        except firmware_tool.ToolError as exc:
            raise HilError("board %s: %s" % (self.board.name, exc)) from None

    def install(self) -> None:
        folder = self.process.folder
        folder.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.build_dir.iterdir()):
            link = folder / entry.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(entry.resolve())
        text = json.dumps(self.device_config(), indent=1, sort_keys=True) + "\n"
        (folder / firmware_tool.CONFIG_NAME).write_text(text)


# --------------------------------------------------------------------------------------- power


class PowerDriver:
    """on / off / cycle. ``off`` must leave the board without power (no graceful stop).

    ``switchable`` is False for a board that is always powered: ``off`` is then an error.
    """

    off_s = 0.0
    switchable = True

    def on(self) -> None:
        raise NotImplementedError

    def off(self) -> None:
        raise NotImplementedError

    def cycle(self) -> None:
        self.off()
        if self.off_s:
            time.sleep(self.off_s)
        self.on()


class CommandPowerDriver(PowerDriver):
    """Runs the power port's commands; a non-zero exit is a ``HilError`` with its output."""

    def __init__(self, port: PowerPort, name: str) -> None:
        self.port = port
        self.name = name
        self.off_s = port.off_s

    def on(self) -> None:
        self._run(self.port.command_on, "on")

    def off(self) -> None:
        self._run(self.port.command_off, "off")

    def _run(self, argv: Sequence[str], what: str) -> None:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HilError(
                "board %s: power %s (%s): %s" % (self.name, what, argv[0], exc)
            ) from None
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()[-400:]
            raise HilError(
                "board %s: power %s failed (exit %d): %s"
                % (self.name, what, done.returncode, output)
            )


class AlwaysOnPowerDriver(PowerDriver):
    """A real board without a power port: always powered, so it cannot be switched off."""

    switchable = False

    def __init__(self, name: str) -> None:
        self.name = name

    def on(self) -> None:
        pass

    def off(self) -> None:
        raise HilError("board %s has no power port (add power_on/power_off)" % self.name)


class ProcessPowerDriver(PowerDriver):
    """A virtual board: power on starts its firmware process, power off SIGKILLs it."""

    def __init__(self, process: VirtualProcess) -> None:
        self.process = process

    def on(self) -> None:
        self.process.start()

    def off(self) -> None:
        self.process.kill()


# ------------------------------------------------------------------------------------- console


class LineSource(Protocol):
    """Where a console's bytes come from."""

    def read(self) -> list[bytes]:
        """Complete lines that arrived since the last call (never blocks)."""
        ...

    def skip_to_end(self) -> None:
        """Forget everything that arrived so far."""
        ...


class LineBuffer:
    """Bytes in, complete lines out; an endless "line" (noise) is dropped, not buffered."""

    def __init__(self) -> None:
        self.partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE_BYTES:
            self.partial = b""
        return lines


class NoLines:
    """A console with nothing on it (fakes, boards without a console)."""

    def read(self) -> list[bytes]:
        return []

    def skip_to_end(self) -> None:
        pass


class FileLines:
    """New complete lines appended to a file (a virtual board's stdout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._buffer = LineBuffer()

    def read(self) -> list[bytes]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        return self._buffer.feed(data)

    def skip_to_end(self) -> None:
        try:
            self._offset = self.path.stat().st_size
        except FileNotFoundError:
            self._offset = 0
        self._buffer = LineBuffer()


class SerialLines:
    """New complete lines from a serial port (pyserial, opened on first use, never blocks).

    A port that vanishes (native-USB boards re-enumerate after a reset or power cycle) is
    closed and opened again at the next read; until then the console is just quiet and
    ``last_error`` says why.
    """

    def __init__(self, port: SerialPort) -> None:
        self.port = port
        self.last_error: str | None = None
        self._serial: Any = None
        self._buffer = LineBuffer()

    def read(self) -> list[bytes]:
        import serial  # pyserial comes with mpremote/esptool; only real labs need it

        try:
            if self._serial is None:
                self._serial = serial.serial_for_url(self.port.path, self.port.baud, timeout=0)
            data = self._serial.read(65536)
        except (serial.SerialException, OSError) as exc:
            self.last_error = "serial port %s: %s" % (self.port.path, exc)
            self.close()
            return []
        return self._buffer.feed(data)

    def skip_to_end(self) -> None:
        self.read()  # opens the port if needed
        if self._serial is not None:
            self._serial.reset_input_buffer()
        self._buffer = LineBuffer()

    def close(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(Exception):  # closing a vanished port may fail: it is gone
                self._serial.close()
            self._serial = None


class ConsoleDriver:
    """A node's console: its ``status {...}`` JSON lines and ``role ...`` lines.

    The firmware prints the same lines on a real board's serial port and on the unix port's
    stdout. Anything else is kept only as log tail; a status line that does not parse is
    counted in ``bad_lines`` (a serial line can be garbled) and ignored.
    """

    def __init__(self, name: str, source: LineSource) -> None:
        self.name = name
        self.source = source
        self.tail: collections.deque[str] = collections.deque(maxlen=CONSOLE_KEEP_LINES)
        self.last_status: dict[str, Any] | None = None
        self.roles: list[str] = []
        self.bad_lines = 0

    def read(self) -> list[str]:
        """Lines that arrived since the last read (also parsed into ``last_status``)."""
        out = []
        for raw in self.source.read():
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if len(line) > MAX_LINE_BYTES:
                self.bad_lines += 1
                continue
            out.append(line)
            self.tail.append(line)
            if line.startswith("status "):
                self._parse_status(line[len("status ") :])
            elif line.startswith("role "):
                self.roles.append(line)
                del self.roles[:-CONSOLE_KEEP_LINES]
        return out

    def _parse_status(self, text: str) -> None:
        try:
            status = json.loads(text)
        except ValueError:
            self.bad_lines += 1
            return
        if not isinstance(status, dict) or status.get("node") != self.name:
            self.bad_lines += 1
            return
        self.last_status = status

    def mark(self) -> None:
        """Forget what was printed so far: later waits see only new lines (e.g. after boot)."""
        self.source.skip_to_end()
        self.last_status = None

    def status(self) -> dict[str, Any] | None:
        """The newest status the node printed (None before its first one)."""
        self.read()
        return self.last_status

    def wait_status(
        self,
        check: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 20.0,
        what: str = "status line",
    ) -> dict[str, Any]:
        """Wait for a status line (for which ``check`` holds); ``HilTimeout`` otherwise."""

        def wanted() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and (check is None or check(status)) else None

        found: dict[str, Any] | None = poll_until(wanted, timeout, POLL_S)
        if found is None:
            problem = getattr(self.source, "last_error", None)
            raise HilTimeout(
                "board %s: no %s within %.0f s%s; console tail:\n%s"
                % (
                    self.name,
                    what,
                    timeout,
                    " (%s)" % problem if problem else "",
                    "\n".join(list(self.tail)[-15:]),
                )
            )
        return found


# ------------------------------------------------------------------------------------- gateway


class GatewayDriver:
    """The gateway's JSON API: mesh state (leader, term), readings, health."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._thread = NamespaceThread(gateway.netns) if gateway.netns else None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` (JSON); None on 404; ``HilError`` on anything else that fails."""
        url = self.gateway.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if self._thread is not None:
            return self._thread.call(_get_json, url)
        return _get_json(url)

    def healthy(self) -> bool:
        try:
            return self.get("/healthz") is not None
        except HilError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_until(self.healthy, timeout, "gateway %s to answer" % self.gateway.url)

    def mesh(self, mesh: str) -> dict[str, Any] | None:
        state = self.get("/api/meshes/%s" % urllib.parse.quote(mesh, safe=""))
        return state if isinstance(state, dict) else None

    def leader(self, mesh: str) -> tuple[str | None, int]:
        """(leader, term) as the gateway last saw it; (None, 0) before the first batch."""
        state = self.mesh(mesh) or {}
        leader = state.get("leader")
        return (leader if isinstance(leader, str) else None), int(state.get("term") or 0)

    def readings(self, mesh: str, node: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": READINGS_LIMIT}
        if node is not None:
            params["node"] = node
        rows = self.get("/api/meshes/%s/readings" % urllib.parse.quote(mesh, safe=""), **params)
        return rows if isinstance(rows, list) else []

    def stored(self, mesh: str) -> dict[tuple[str, int], list[int]]:
        """(node, boot) -> every seq stored, sorted, duplicates kept (so they can be seen)."""
        out: dict[tuple[str, int], list[int]] = {}
        for row in self.readings(mesh):
            out.setdefault((str(row["node"]), int(row["boot"])), []).append(int(row["seq"]))
        return {key: sorted(seqs) for key, seqs in out.items()}


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise HilError("GET %s: HTTP %d" % (url, exc.code)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HilError("GET %s: %s" % (url, exc)) from None


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; ``HilTimeout`` naming ``what``."""
    result = poll_until(check, timeout, POLL_S)
    if not result:
        raise HilTimeout("waited %.0f s for %s" % (timeout, what))
    return result
