"""``BoardStrategy``: moves one board between the states ``off -> flashed -> booted -> joined``.

| state | means | how it is reached |
|---|---|---|
| ``off`` | no power | power off |
| ``flashed`` | the session's firmware and config are on the board, power off | install once per session (real boards are powered for it), then power off (an always-on board keeps running) |
| ``booted`` | running: the console printed a status line after power on | power on, wait for a status line |
| ``joined`` | the node knows a leader of its mesh | wait for a status line with a leader |

``transition(state)`` goes there from wherever the board is, through the states below it.
Going down is a power off (``flashed`` and ``off`` both end unpowered); asking for ``booted``
on a joined board just records ``booted`` (a joined board is running).

Failure is sticky (labgrid's ``never_retry``): the first exception is kept in ``broken`` and
every later ``transition`` fails at once with ``StrategyBroken`` naming it, so a board that
could not be flashed does not cost every following test its full timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hil.drivers import ConsoleDriver, FirmwareDriver, PowerDriver
from hil.resources import STATES

UNKNOWN = "unknown"


class StrategyBroken(RuntimeError):
    """An earlier transition of this board failed; the board is not touched again."""


class BoardStrategy:
    def __init__(
        self,
        name: str,
        firmware: FirmwareDriver,
        power: PowerDriver,
        console: ConsoleDriver,
        boot_s: float = 20.0,
        join_s: float = 20.0,
    ) -> None:
        self.name = name
        self.firmware = firmware
        self.power = power
        self.console = console
        self.boot_s = boot_s
        self.join_s = join_s
        self.state = UNKNOWN
        self.broken: BaseException | None = None
        self.installed = False
        self.history: list[str] = []  # every state reached, in order (for reports and tests)

    def transition(self, state: str) -> None:
        if state not in STATES:
            # A typo in a test is the caller's bug, not the board's: not sticky.
            raise ValueError("unknown state %r (one of %s)" % (state, ", ".join(STATES)))
        if self.broken is not None:
            raise StrategyBroken(
                "board %s is broken since an earlier failure: %s: %s"
                % (self.name, type(self.broken).__name__, self.broken)
            )
        try:
            self._go(state)
        except Exception as exc:
            self.broken = exc
            raise

    def force(self, state: str) -> None:
        """Record ``state`` without acting (the test changed the board by other means)."""
        if state not in (*STATES, UNKNOWN):
            raise ValueError("unknown state %r" % state)
        self.state = state

    def _go(self, target: str) -> None:
        if target == self.state:
            return
        if target == "off":
            self.power.off()
        elif target == "flashed":
            if not self.installed:
                if self.firmware.needs_power:
                    self.power.on()
                self.firmware.install()
                self.installed = True
            if self.power.switchable:
                self.power.off()
        elif target == "booted":
            if self.state == "joined":
                self._reach(target)
                return
            if self.state != "flashed":
                self._go("flashed")
            # Only lines printed after power on count: the previous boot's are history.
            self.console.mark()
            self.power.on()
            self.console.wait_status(timeout=self.boot_s, what="status line after power on")
        elif target == "joined":
            if self.state != "booted":
                self._go("booted")
            self.console.wait_status(
                lambda status: bool(status.get("leader")),
                timeout=self.join_s,
                what="leader in its status (joining the mesh)",
            )
        self._reach(target)

    def _reach(self, state: str) -> None:
        self.state = state
        self.history.append(state)


class MeshStrategy:
    """The strategies of every board in a lab, by board name (sorted)."""

    def __init__(self, boards: dict[str, BoardStrategy]) -> None:
        self.boards = dict(sorted(boards.items()))

    def __getitem__(self, name: str) -> BoardStrategy:
        return self.boards[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.boards)

    def __len__(self) -> int:
        return len(self.boards)

    def transition(self, state: str) -> None:
        """Every board to ``state``. Boards are powered on before any waits on joining, so a
        mesh forms together (one board waiting alone for a leader would time out)."""
        if state == "joined":
            for strategy in self.boards.values():
                strategy.transition("booted")
        for strategy in self.boards.values():
            strategy.transition(state)

    @property
    def broken(self) -> dict[str, BaseException]:
        return {name: s.broken for name, s in self.boards.items() if s.broken is not None}

    def states(self) -> dict[str, Any]:
        return {name: s.state for name, s in self.boards.items()}
