from collections.abc import Callable
from typing import Any, Final, Protocol, type_check_only

from agent.core import datapath
from agent.core.energy import Energy
from agent.core.messages import Msg
from agent.core.node import Config, Node
from agent.core.node import make_config as make_config
from agent.core.wire import Codec

DEST_MESH: Final = 0
DEST_NODE: Final = 1
DEST_GATEWAY: Final = 2

@type_check_only
class Backlog(Protocol):
    """Readings of earlier boots that travel with the readings (the Pi's journals)."""

    items: Any
    def due(self, now: int, leader: str, term: int) -> list[Any]: ...
    def confirm(self, ranges: Any) -> Any: ...

def nonzero(drops: dict[str, int]) -> dict[str, int]: ...

class NodeApp:
    id: str
    mesh: str
    boot: int
    max_term: int
    node: Node
    codec: Codec
    buffer: datapath.ReadingBuffer
    collector: datapath.Collector
    backlog: Backlog | None
    addresses: dict[str, Any]
    # (dest, name, kind, frame): DEST_MESH / DEST_NODE (name: the node) / DEST_GATEWAY (batch id)
    out: list[tuple[int, Any, int, bytes]]
    # (kind, ...): "role", "term", "clock_paused", "confirmed", "batch_ack", "max_term", "dropped",
    # "error"
    events: list[tuple[Any, ...]]
    out_dropped: int
    ignored: int
    errors: int
    last_error: str | None
    sample_errors: int
    gateway_known: bool
    needs_address: bool
    energy: Energy | None
    sleep_ms: int
    # node -> [wake interval ms, heard, score, battery, link, flags]
    sleepers: dict[str, list[int]]
    def __init__(
        self,
        node_id: str,
        mesh: str,
        key: bytes | None,
        boot: int,
        dumps: Callable[[Any], bytes],
        loads: Callable[[bytes], Any],
        config: Config | None = None,
        seed: int = 0,
        buffer_size: int = 64,
        collector_size: int | None = None,
        max_frame_bytes: int = ...,
        max_in_flight: int = 1,
        check_batch: Callable[[Any], str | None] | None = None,
        clock_paused: bool = False,
        term: int = 0,
        token: int | None = None,
    ) -> None: ...
    def start(self, now: int) -> None: ...
    def stop(self, now: int) -> None: ...
    def frame(self, data: bytes, source: Any, now: int) -> Msg | None: ...
    def tick(self, now: int) -> None: ...
    def sample(self, now: int, t_ms: int, metrics: dict[str, int]) -> int | None: ...
    def set_power(self, battery: int, link: int, mains: bool, eligible: bool = True) -> None: ...
    def connected(self, now: int, value: bool, listen_ms: int = 0) -> None: ...
    def rebase(self, now: int, ms: int) -> None: ...
    def clock_ms(self, now: int) -> int: ...
    @property
    def clock_paused(self) -> bool: ...
    @property
    def wakeup(self) -> int: ...
    def address(self, node_id: str) -> Any: ...
    def status(self, now: int, detail: bool = True) -> dict[str, Any]: ...
