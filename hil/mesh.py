"""``Mesh``: every board of an environment, as tests use them together.

An environment's board targets are the ones with a ``MeshNodeStrategy`` (one per board, as
labgrid has one strategy per target); the gateway is the target with a ``MeshGatewayDriver``,
the broker the one with a ``MeshBrokerDriver``, Pis those with a ``MeshAgentDriver``. ``mesh["vb-1"]`` is that board's strategy
(``.console``, ``.power``, ``.deploy``, ``.flash`` are its drivers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from labgrid.exceptions import NoDriverFoundError, NoStrategyFoundError

from hil.strategy import MeshNodeStrategy


class Mesh:
    def __init__(self, env: Any) -> None:
        self.env = env
        self.boards: dict[str, MeshNodeStrategy] = {}
        self.gateway_target: Any = None
        self.broker_target: Any = None
        self.agents: dict[str, Any] = {}  # Pi targets (a MeshAgentDriver), by name
        for name in sorted(env.config.get_targets()):
            target = env.get_target(name)
            try:
                strategy = target.get_strategy()
            except NoStrategyFoundError:
                strategy = None
            if isinstance(strategy, MeshNodeStrategy):
                self.boards[name] = strategy
            if _has_driver(target, "MeshGatewayDriver"):
                self.gateway_target = target
            if _has_driver(target, "MeshBrokerDriver"):
                self.broker_target = target
            if _has_driver(target, "MeshAgentDriver"):
                self.agents[name] = target

    def __getitem__(self, name: str) -> MeshNodeStrategy:
        return self.boards[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.boards)

    def __len__(self) -> int:
        return len(self.boards)

    @property
    def names(self) -> list[str]:
        return list(self.boards)

    @property
    def mesh_name(self) -> str:
        """The mesh the boards are in (the env check makes sure it is one)."""
        first = next(iter(self.boards.values()))
        return str(first.deploy.mesh)

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

    def states(self) -> dict[str, str]:
        return {name: s.node_state for name, s in self.boards.items()}

    def console_counts(self) -> dict[str, int]:
        """How many lines each active console has read (to attach a test's share later)."""
        return {name: s.console.count for name, s in self.boards.items()}


def _has_driver(target: Any, cls: str) -> bool:
    try:
        target.get_driver(cls, activate=False)
    except (NoDriverFoundError, KeyError):
        return False
    return True
