"""A running lab as tests see it (labgrid's "targets"): its boards' drivers, its gateway, and
what to undo at the end. ``hil.lab`` and ``hil.virtual`` build one from a lab file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.drivers import ConsoleDriver, FirmwareDriver, GatewayDriver, PowerDriver
from hil.resources import LabSpec
from hil.strategy import BoardStrategy, MeshStrategy


@dataclass
class Board:
    """One board's drivers (labgrid's "target")."""

    name: str
    firmware: FirmwareDriver
    power: PowerDriver
    console: ConsoleDriver


@dataclass
class HilLab:
    """A running lab: its spec, boards, gateway, and what to undo at the end."""

    spec: LabSpec
    boards: dict[str, Board]
    gateway: GatewayDriver | None
    build_hash: str
    manifest: dict[str, Any]
    workdir: Path
    closers: list[Any] = field(default_factory=list)

    def strategy(self) -> MeshStrategy:
        return MeshStrategy(
            {
                name: BoardStrategy(
                    name,
                    board.firmware,
                    board.power,
                    board.console,
                    boot_s=self.spec.boot_s,
                    join_s=self.spec.join_s,
                )
                for name, board in self.boards.items()
            }
        )

    def close(self) -> None:
        """Undo everything, newest first; every step runs even if one fails."""
        errors = []
        while self.closers:
            closer = self.closers.pop()
            try:
                closer()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
