"""``MeshConsoleDriver``: a node's console as the firmware prints it: ``status {...}`` JSON
lines (role, term, leader, boot, buffers) and ``role ...`` lines.

It binds any labgrid ``ConsoleProtocol``: ``SerialDriver`` on a real board's USB serial port
(also a farm's ``NetworkSerialPort``), ``MicroPythonUnixDriver`` on a virtual board. It reads
without blocking, only when a test asks, so lines are taken in order from the port's buffer.

Every line read is also appended to ``<workdir>/consoles/<board>.log`` (the post-mortem
record; the pytest plugin attaches each test's lines to the JUnit report). A status line that
does not parse, or names another node, is counted in ``bad_lines`` and ignored (serial lines
can be garbled); an endless "line" is dropped.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from pexpect import TIMEOUT

from hil.drivers.common import POLL_S, HilTimeout, workdir
from testkit.waiting import poll_until

KEEP_LINES = 2000  # lines kept in memory (the log file keeps all)
TAIL_LINES = 15  # shown in a timeout's message
MAX_LINE_BYTES = 16384  # a longer "line" is noise on the serial port: dropped, counted
READ_CHUNK = 65536


@target_factory.reg_driver
@attr.s(eq=False)
class MeshConsoleDriver(Driver):
    bindings: ClassVar[dict[str, Any]] = {"console": "ConsoleProtocol"}

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self.count = 0  # lines read so far (``lines_since`` counts from here)
        self.last_status: dict[str, Any] | None = None
        self.roles: list[str] = []
        self.bad_lines = 0
        self.last_error: str | None = None
        self._partial = b""
        self.log_path = Path()

    def on_activate(self) -> None:
        folder = workdir(self.target) / "consoles"
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / ("%s.log" % self.target.name)

    @property
    def node(self) -> str:
        """The node id its status lines carry: the target's name."""
        return str(self.target.name)

    @Driver.check_active
    def read(self) -> list[str]:
        """Lines that arrived since the last read (also parsed into ``last_status``)."""
        data = b""
        while True:
            try:
                chunk = self.console.read(size=1, timeout=0.0, max_size=READ_CHUNK)
            except TIMEOUT:
                break
            except OSError as exc:  # a vanished serial port (pyserial raises OSError kinds)
                self.last_error = "console: %s" % exc
                break
            data += chunk
            if len(chunk) < READ_CHUNK:
                break
        raw_lines = (self._partial + data).split(b"\n")
        self._partial = raw_lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""
            self.bad_lines += 1
        out = []
        for raw in raw_lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if len(line) > MAX_LINE_BYTES:
                self.bad_lines += 1
                continue
            out.append(line)
            if line.startswith("status "):
                self._parse_status(line[len("status ") :])
            elif line.startswith("role "):
                self.roles.append(line)
                del self.roles[:-KEEP_LINES]
        if out:
            self.lines.extend(out)
            self.count += len(out)
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write("".join(line + "\n" for line in out))
        return out

    def _parse_status(self, text: str) -> None:
        try:
            status = json.loads(text)
        except ValueError:
            self.bad_lines += 1
            return
        if not isinstance(status, dict) or status.get("node") != self.node:
            self.bad_lines += 1
            return
        self.last_status = status

    def lines_since(self, count: int) -> list[str]:
        """The lines read after the first ``count`` (as many as are still kept)."""
        new = self.count - count
        if new <= 0:
            return []
        return list(self.lines)[-new:]

    def mark(self) -> None:
        """Forget what was printed so far: later waits see only new lines (e.g. after boot)."""
        self.read()
        self._partial = b""
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
            raise HilTimeout(
                "board %s: no %s within %.0f s%s; console tail:\n%s"
                % (
                    self.node,
                    what,
                    timeout,
                    " (%s)" % self.last_error if self.last_error else "",
                    "\n".join(list(self.lines)[-TAIL_LINES:]),
                )
            )
        return found
