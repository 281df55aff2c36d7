"""``MicroPythonUnixDriver``: a virtual board, the way labgrid's QEMUDriver is a virtual
machine. It binds a ``MicroPythonUnixPort`` (a namespace and a folder) and implements:

- ``BootstrapProtocol.load()``: "flash MicroPython": erase the folder (firmware, config,
  boot counter: all gone, as ``esptool erase-flash`` leaves an ESP32) and check that the
  slot's interpreter is a working MicroPython;
- ``PowerProtocol``: ``on`` starts the firmware on the interpreter inside the slot's
  namespace, ``off`` SIGKILLs it (a power loss: nothing is flushed or handed over);
- ``ConsoleProtocol``: what the firmware printed (its stdout, kept across power cycles as a
  serial log would be), read without blocking.

``install()`` is the deploy step (``MeshDeployDriver`` calls it): the build is linked into the
folder as a flash holds it, next to the device's ``config.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.protocol import BootstrapProtocol, ConsoleProtocol, PowerProtocol
from pexpect import TIMEOUT

from hil.drivers.common import HilError, bench_of
from testkit.tools import find_tool
from tools import firmware as firmware_tool

KILL_WAIT_S = 10.0
PROBE_TIMEOUT_S = 10.0
CYCLE_OFF_S = 0.2  # a power cycle's off time: a process has no capacitors to drain


@target_factory.reg_driver
@attr.s(eq=False)
class MicroPythonUnixDriver(Driver, PowerProtocol, ConsoleProtocol, BootstrapProtocol):
    bindings: ClassVar[dict[str, Any]] = {"port": "MicroPythonUnixPort"}

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.netns = ""
        self.address = ""
        self.folder = Path()
        self.broker = ""  # the bench's broker (host:port) in MQTT mode
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._offset = 0
        self._interpreter = ""

    # -- labgrid life cycle ----------------------------------------------------------------
    def on_activate(self) -> None:
        port: Any = self.port
        if port.netns:
            self.netns, self.address, folder = port.netns, port.address, port.folder
        else:
            bench = bench_of(self.target, port.bench)
            slot = bench.slot(port.host)
            self.netns, self.address, folder = slot.netns, slot.address, slot.folder
            self.broker = bench.broker_address
        if not (self.netns and self.address and folder):
            raise HilError("%s: MicroPythonUnixPort needs netns, address and folder" % self.name_)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._offset = self.stdout.stat().st_size  # an earlier session's output is history

    def on_deactivate(self) -> None:
        self._kill()

    @property
    def name_(self) -> str:
        return "board %s" % self.target.name

    @property
    def stdout(self) -> Path:
        """The firmware's output; beside the flash folder, so erasing the flash keeps it."""
        return self.folder.with_name(self.folder.name + ".stdout")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- BootstrapProtocol: flash MicroPython ------------------------------------------------
    @Driver.check_active
    def load(self, filename: str | None = None) -> None:
        """Erase the flash and check the interpreter (``filename`` overrides the port's)."""
        self._kill()
        self._interpreter = self.interpreter(filename)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)

    def interpreter(self, override: str | None = None) -> str:
        port: Any = self.port
        wanted = override or port.interpreter
        path = find_tool(wanted) if os.sep not in wanted else wanted
        if path is None or not os.access(path, os.X_OK):
            raise HilError(
                "%s: cannot flash: the interpreter %s does not exist or cannot run"
                % (self.name_, wanted)
            )
        try:
            done = subprocess.run(
                [path, "-c", "import sys; print(sys.implementation.name)"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HilError("%s: cannot flash: %s: %s" % (self.name_, path, exc)) from None
        if done.returncode != 0 or done.stdout.strip() != "micropython":
            raise HilError(
                "%s: cannot flash: %s is not a MicroPython unix port (exit %d): %s"
                % (self.name_, path, done.returncode, (done.stderr or done.stdout).strip()[-300:])
            )
        return path

    # -- deploy ------------------------------------------------------------------------------
    def device_overrides(self) -> dict[str, Any]:
        """Keys this slot sets in the node's config: files in its folder, its address."""
        overrides: dict[str, Any] = {
            "status_file": str(self.folder / "status.json"),
            "boot_file": str(self.folder / "boot_count"),
            "udp": {"interface": self.address},
            "hw": {"kind": "unix"},
        }
        if self.broker:
            overrides["mqtt"] = {"broker": self.broker}
        return overrides

    @Driver.check_active
    def install(self, build_dir: Path, device: dict[str, Any]) -> None:
        if not self.folder.is_dir():
            raise HilError("%s: no flash folder %s: flash it first" % (self.name_, self.folder))
        for entry in sorted(build_dir.iterdir()):
            link = self.folder / entry.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(entry.resolve())
        text = json.dumps(device, indent=1, sort_keys=True) + "\n"
        (self.folder / firmware_tool.CONFIG_NAME).write_text(text)

    # -- PowerProtocol -----------------------------------------------------------------------
    @Driver.check_active
    def on(self) -> None:
        if self.running:
            return
        if not (self.folder / "main.py").exists():
            raise HilError("%s: %s holds no firmware: deploy it first" % (self.name_, self.folder))
        port: Any = self.port
        argv = ["ip", "netns", "exec", self.netns, "env", "MICROPYPATH=.frozen:."]
        if not self._interpreter:
            self._interpreter = self.interpreter()
        argv.append(self._interpreter)
        if port.heapsize:
            argv += ["-X", "heapsize=%s" % port.heapsize]
        argv.append("main.py")
        # Appending: the console survives power cycles, as a serial log would.
        with self.stdout.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1

    @Driver.check_active
    def off(self) -> None:
        self._kill()

    @Driver.check_active
    def cycle(self) -> None:
        self._kill()
        time.sleep(CYCLE_OFF_S)
        self.on()

    def _kill(self) -> None:
        """Power loss: SIGKILL to the whole process group."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(KILL_WAIT_S)

    # -- ConsoleProtocol ---------------------------------------------------------------------
    @Driver.check_active
    def read(self, size: int = 1, timeout: float = 0.0, max_size: int | None = None) -> bytes:
        """New output since the last read; ``pexpect.TIMEOUT`` if none came within
        ``timeout`` (the same contract as labgrid's SerialDriver)."""
        deadline = time.monotonic() + timeout
        while True:
            data = self._read_new(max_size or 65536)
            if len(data) >= size or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if not data:
            raise TIMEOUT("no console output within %.2f s" % timeout)
        return data

    def _read_new(self, limit: int) -> bytes:
        try:
            with self.stdout.open("rb") as f:
                f.seek(self._offset)
                data = f.read(limit)
        except FileNotFoundError:
            return b""
        self._offset += len(data)
        return data

    @Driver.check_active
    def write(self, data: bytes) -> int:
        raise HilError("%s: a virtual board's console is output only" % self.name_)
