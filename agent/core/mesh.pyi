from collections.abc import Callable, Iterable
from typing import Final

from agent.core.cohort import Cohort
from agent.core.node import Config, Node
from agent.core.prng import Prng

DEFAULT_MAX_DELAY_MS: Final = 10

class SimNode:
    index: int
    id: str
    battery: int
    link: int
    mains: bool
    eligible: bool
    node: Node | None
    boots: int
    tick_at: int
    terms_started: int
    sent: int
    view: tuple[int, int, str | None]
    cohort: Cohort | None
    cpos: int
    def __init__(
        self, index: int, node_id: str, battery: int, link: int, mains: bool, eligible: bool
    ) -> None: ...
    @property
    def up(self) -> bool: ...

class Mesh:
    config: Config
    seed: int
    prng: Prng
    max_delay_ms: int
    on_change: Callable[[int, SimNode], None] | None
    nodes: dict[str, SimNode]
    order: list[SimNode]
    now: int
    loss: int
    per_frame: bool
    groups: dict[str, int] | None
    messages: int
    dropped: int
    delivered: int
    batched: bool
    def __init__(
        self,
        config: Config | None,
        seed: int = 0,
        max_delay_ms: int = 10,
        on_change: Callable[[int, SimNode], None] | None = None,
        batched: bool = True,
    ) -> None: ...
    def add(
        self,
        node_id: str,
        battery: int = 1000,
        link: int = 1000,
        mains: bool = False,
        eligible: bool = True,
    ) -> SimNode: ...
    def start(self, node_id: str) -> None: ...
    def restart(self, node_id: str) -> None: ...
    def crash(self, node_id: str) -> None: ...
    def stop(self, node_id: str) -> None: ...
    def set_power(
        self,
        node_id: str,
        battery: int | None = None,
        link: int | None = None,
        mains: bool | None = None,
        eligible: bool | None = None,
    ) -> None: ...
    def partition(self, groups: Iterable[Iterable[str]]) -> None: ...
    def heal(self) -> None: ...
    def set_loss(self, per_mille: int, per_frame: bool = False) -> None: ...
    def schedule_step(self, at: int, fn: Callable[[], object]) -> None: ...
    def run_until(self, until: int) -> None: ...
    def terms_started(self) -> int: ...
    def live(self) -> list[SimNode]: ...
