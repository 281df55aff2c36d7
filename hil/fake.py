"""Fake drivers: test the harness (strategies, plugin logic) without boards or processes.

``FakeBoard(name)`` wires a fake firmware, power and console that share one ``log`` of calls
(``"install"``, ``"on"``, ``"off"``, ``"mark"``). The fake console shows a status line only
while the fake power is on, with ``leader`` as set on the board. Any step can be made to
fail by putting an exception in ``board.fail[step]``.
"""

from __future__ import annotations

from typing import Any

from hil.drivers import ConsoleDriver, FirmwareDriver, NoLines, PowerDriver


class FakeBoard:
    def __init__(
        self,
        name: str,
        leader: str | None = None,
        needs_power: bool = False,
        switchable: bool = True,
    ) -> None:
        self.name = name
        self.leader = leader
        self.log: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.powered = False
        self.boots = 0
        self.firmware = FakeFirmwareDriver(self, needs_power)
        self.power = FakePowerDriver(self, switchable)
        self.console = FakeConsoleDriver(self)

    def step(self, what: str) -> None:
        self.log.append(what)
        if what in self.fail:
            raise self.fail[what]


class FakeFirmwareDriver(FirmwareDriver):
    def __init__(self, board: FakeBoard, needs_power: bool) -> None:
        self.board = board
        self.needs_power = needs_power

    def install(self) -> None:
        if self.needs_power and not self.board.powered:
            raise AssertionError("installing on an unpowered board")
        self.board.step("install")


class FakePowerDriver(PowerDriver):
    def __init__(self, board: FakeBoard, switchable: bool) -> None:
        self.board = board
        self.switchable = switchable

    def on(self) -> None:
        self.board.step("on")
        if not self.board.powered:
            self.board.boots += 1
        self.board.powered = True

    def off(self) -> None:
        if not self.switchable:
            raise AssertionError("switching off an always-on board")
        self.board.step("off")
        self.board.powered = False


class FakeConsoleDriver(ConsoleDriver):
    def __init__(self, board: FakeBoard) -> None:
        super().__init__(board.name, NoLines())
        self.board = board

    def mark(self) -> None:
        self.board.step("mark")
        self.last_status = None

    def status(self) -> dict[str, Any] | None:
        if not self.board.powered:
            return None
        self.last_status = {
            "node": self.board.name,
            "boot": self.board.boots,
            "leader": self.board.leader,
            "term": 1 if self.board.leader else 0,
        }
        return self.last_status
