"""Child processes that end with their parent, and a supervisor that restarts them as systemd would.

`meshelect demo` runs a gateway and agents as separate processes. Two promises hold here:

- **No orphans.** Every child asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) for a SIGTERM
  when its parent dies, however it dies: SIGKILL, a crash, an exception. SIGTERM lets an agent
  hand over and a gateway close its database. A child whose parent died before the request
  took effect notices (its parent pid changed) and exits at once. The kernel ties the signal to
  the *thread* that forked the child, so children are spawned from the main thread only.
- **Deaths are survived.** A child that exits is started again after ``restart_after`` seconds,
  with a line saying why it ended; one that keeps dying soon after starting waits twice as
  long each time (up to ``MAX_RESTART_S``), as systemd's restart limits would, unless it was
  ended on purpose (``Child.on_purpose``). ``Child.before_start`` runs before every start.

Children run in their own session: a Ctrl-C in the terminal reaches only the parent, which
stops them in order (agents first, so a leader hands over; the gateway last).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
QUICK_EXIT_S = 10.0  # a child that ran for less than this is restarting too often
MAX_RESTART_S = 60.0


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when this process dies (Linux)."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died between fork and prctl: nobody would stop us

    return in_child


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return "killed by %s" % signal.Signals(-returncode).name
        except ValueError:
            return "killed by signal %d" % -returncode
    return "exit status %d" % returncode


class Child:
    """One supervised process: how to start it, and what became of it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: str,
        env: dict[str, str],
        cwd: str | None = None,
        last: bool = False,
        before_start: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.last = last  # stopped after the others (the gateway)
        self.before_start = before_start
        self.on_purpose = False  # its next end was asked for: no back-off for it
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0
        self.restart_at: float | None = None
        self.delay = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> bool:
        """Send ``sig`` if the process runs; True if it was sent."""
        if not self.running():
            return False
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
            return True
        return False


class Supervisor:
    """Starts children, restarts the ones that end, stops them all. Main thread only."""

    def __init__(
        self,
        restart_after: float,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.restart_after = restart_after
        self.say = say
        self.clock = clock
        self.children: list[Child] = []

    def start(self, child: Child) -> Child:
        if child not in self.children:
            self.children.append(child)
        if child.before_start is not None:
            child.before_start()
        with open(child.log_path, "ab") as log:
            child.proc = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child.env,
                cwd=child.cwd,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
                preexec_fn=die_with_parent(),
            )
        child.started = self.clock()
        child.restart_at = None
        return child

    def check(self) -> None:
        """Notice children that ended; start again those whose wait is over."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.start(child)
                    self.say("%s started again (pid %d)" % (child.name, child.pid or 0))
                continue
            if child.proc is None or child.proc.poll() is None or self.restart_after <= 0:
                continue
            quick = now - child.started < QUICK_EXIT_S and not child.on_purpose
            base = self.restart_after
            child.delay = min(MAX_RESTART_S, max(base, 2 * child.delay)) if quick else base
            child.restart_at = now + child.delay
            child.on_purpose = False
            self.say(
                "%s exited (%s); starting it again in %g s"
                % (child.name, describe_exit(child.proc.returncode), child.delay)
            )

    def stop_all(self, grace: float) -> list[str]:
        """SIGTERM the children (the ``last`` ones after the others), SIGKILL what is left after
        ``grace`` seconds per group; returns the names of any that could not be ended."""
        for child in self.children:
            child.restart_at = None
        first = [c for c in self.children if not c.last]
        last = [c for c in self.children if c.last]
        for group in (first, last):
            self._end(group, grace)
        return [c.name for c in self.children if c.running()]

    def _end(self, group: Iterable[Child], grace: float) -> None:
        group = list(group)
        for child in group:
            child.signal(signal.SIGTERM)
        deadline = self.clock() + grace
        for child in group:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.05, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(5)
