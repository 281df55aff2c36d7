"""``MeshNodeStrategy``: a labgrid ``Strategy`` moving one board through
``off -> flashed -> booted -> joined``.

| state | means | how it is reached |
|---|---|---|
| ``off`` | no power | power off |
| ``flashed`` | MicroPython, the session's firmware and the node's config are on the board, power off | once per session: flash (if the target has a ``BootstrapProtocol`` driver: esptool, or a virtual board's erase), deploy, power off |
| ``booted`` | running: the console printed a status line after power on | power on, wait for a status line |
| ``joined`` | the node knows a leader of its mesh | wait for a status line with a leader |

``transition(state)`` goes there from wherever the board is, through the states below it.
Going down is a power off; asking for ``booted`` on a joined board just records ``booted``.
``reflash()`` erases and installs the board again mid-run (its boot counter and files are
gone, as after ``meshelect firmware flash``) and leaves it ``flashed``.

Failure is sticky (labgrid's ``never_retry``, with the board and the cause in the message):
the first exception is kept in ``broken``; every later call fails at once with
``StrategyError``, and the pytest plugin skips later tests of the mesh naming it, so a board
that could not be flashed costs one failure, not one timeout per test. A state name that does
not exist is the caller's bug and is not sticky.

On a real board the serial port is shared: the console (labgrid's ``SerialDriver``) lets go of
it while esptool and mpremote use it, and takes it back for booting.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attr
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy import Strategy, StrategyError

if TYPE_CHECKING:
    from hil.drivers.console import MeshConsoleDriver
    from hil.drivers.firmware import MeshDeployDriver

STATES = ("off", "flashed", "booted", "joined")
F = TypeVar("F", bound=Callable[..., Any])


class Status(enum.Enum):
    unknown = 0
    off = 1
    flashed = 2
    booted = 3
    joined = 4


def sticky(func: F) -> F:
    """labgrid's ``never_retry``, naming the board and the first failure in the message."""

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.broken is not None:
            raise StrategyError(self.broken_message()) from self.broken
        try:
            return func(self, *args, **kwargs)
        except Exception as exc:
            self.broken = exc
            raise

    return wrapper  # type: ignore[return-value]


@target_factory.reg_driver
@attr.s(eq=False)
class MeshNodeStrategy(Strategy):
    bindings: ClassVar[dict[str, Any]] = {
        "power": "PowerProtocol",
        "console": "MeshConsoleDriver",
        "deploy": "MeshDeployDriver",
        "flash": {"BootstrapProtocol", None},
    }
    # Set by labgrid when it binds the strategy (annotations only: not attrs fields).
    power: Any
    console: MeshConsoleDriver
    deploy: MeshDeployDriver
    flash: Any
    boot_s: float = attr.ib(default=20.0, validator=attr.validators.instance_of(float))
    join_s: float = attr.ib(default=20.0, validator=attr.validators.instance_of(float))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.status = Status.unknown
        self.installed = False
        self.history: list[str] = []  # every state reached, in order (reports and tests)

    @property
    def node_state(self) -> str:
        """The state's name (``state`` is labgrid's binding state of the driver)."""
        return self.status.name

    def broken_message(self) -> str:
        exc = self.broken
        return "board %s is broken since an earlier failure: %s: %s" % (
            self.target.name,
            type(exc).__name__,
            exc,
        )

    def transition(self, status: str | Status) -> None:
        self._transition(_status(status))

    def force(self, status: str | Status) -> None:
        """Record ``status`` without acting (the test changed the board by other means)."""
        self.status = _status(status, allow_unknown=True)

    @sticky
    @step(args=["status"])
    def _transition(self, status: Status) -> None:
        self._go(status)

    @sticky
    @step()
    def reflash(self) -> None:
        """Erase and install the board again (boot counter and files gone); ends ``flashed``."""
        self._power().off()
        self._reach(Status.off)
        self.installed = False
        self._go(Status.flashed)

    # -- the state machine --------------------------------------------------------------------
    def _go(self, target: Status) -> None:
        if target == self.status:
            return
        if target == Status.off:
            self._power().off()
        elif target == Status.flashed:
            if not self.installed:
                self._install()
                self.installed = True
            self._power().off()
        elif target == Status.booted:
            if self.status == Status.joined:
                self._reach(target)
                return
            if self.status != Status.flashed:
                self._go(Status.flashed)
            self.target.activate(self.console)
            # Only lines printed after power on count: the previous boot's are history.
            self.console.mark()
            self._power().on()
            self.console.wait_status(timeout=self.boot_s, what="status line after power on")
        elif target == Status.joined:
            if self.status != Status.booted:
                self._go(Status.booted)
            self.target.activate(self.console)
            self.console.wait_status(
                lambda status: bool(status.get("leader")),
                timeout=self.join_s,
                what="leader in its status (joining the mesh)",
            )
        self._reach(target)

    def _install(self) -> None:
        self.target.activate(self.deploy)
        if self.deploy.on_serial:
            self._power().on()  # esptool and mpremote talk to a running chip
            # The console's serial driver lets go of the port; activating the console again
            # (booted) takes it back.
            self.target.deactivate(self.console.console)
        if self.flash is not None:
            self.target.activate(self.flash)
            self.flash.load()
        self.target.activate(self.deploy)
        self.deploy.deploy()

    def _power(self) -> Any:
        self.target.activate(self.power)
        return self.power

    def _reach(self, status: Status) -> None:
        self.status = status
        self.history.append(status.name)


def _status(value: str | Status, allow_unknown: bool = False) -> Status:
    if isinstance(value, Status):
        return value
    names = STATES + (("unknown",) if allow_unknown else ())
    if value not in names:
        # A typo in a test is the caller's bug, not the board's: not sticky.
        raise ValueError("unknown state %r (one of %s)" % (value, ", ".join(STATES)))
    return Status[value]
