from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from agent.core.messages import Msg

# A reading on the wire, member -> leader: [boot, seq, t_ms, {metric: value}].
_Reading = list[Any]
# A range of confirmed seqs: [boot, first_seq, last_seq].
_Range = list[int]
# A row of the mesh view: [node, score, battery, link, flags, age_ms]; [term, leader, reason].
_Row = Sequence[Any]

_BATCH_MS: Final = 1000
_BATCH_RESEND_MS: Final = 2000
RESEND_MS: Final = 4000
BATCH_IDLE_MS: Final = 10000
_READINGS_FRAME_BYTES: Final = 1200
BATCH_FRAME_BYTES: Final = 4096
_MAX_METRICS: Final = 8
_MAX_NAME_BYTES: Final = 16
MAX_MESH_BYTES: Final = 32
_MAX_VALUE: Final = 9007199254740991
_MAX_U32: Final = 0xFFFFFFFF
_DROPPED_METRIC: Final = "_dropped"
MAX_READINGS_PER_FRAME: Final = 32
_MAX_RANGES_PER_ACK: Final = 32
BATCH_MAX_READINGS: Final = 64
MAX_IN_FLIGHT: Final = 2
_MAX_REASON_BYTES: Final = 16

def make_messages(
    sender: str, leader: str, term: int, readings: Iterable[_Reading]
) -> list[Msg]: ...
def make_ack_messages(
    sender: str, term: int, confirmations: Iterable[tuple[str, list[_Range]]]
) -> list[Msg]: ...
def batch_message(sender: str, term: int, batch: dict[str, Any]) -> Msg: ...
def cbor_size(value: object) -> int: ...

class ReadingBuffer:
    node: str
    boot: int
    capacity: int
    resend_ms: int
    wakeup: int
    depth: int
    dropped: int
    taken: int
    sent: int
    resent: int
    confirmed: int
    ignored_ranges: int
    invalid_acks: int
    foreign_acks: int
    sleep_ms: int
    def __init__(self, node: str, boot: int, capacity: int, resend_ms: int = 4000) -> None: ...
    def add(self, t_ms: int, metrics: dict[str, int]) -> int: ...
    def due(
        self, now: int, leader: str | None, term: int, max_count: int = 32
    ) -> list[_Reading]: ...
    def due_messages(
        self, now: int, leader: str | None, term: int, max_count: int = 32
    ) -> list[Msg]: ...
    def confirm(self, ranges: object, sent: bool = False) -> int: ...
    def on_ack(self, msg: Msg) -> int: ...
    def unconfirmed(self) -> list[int]: ...

class Collector:
    node: str
    mesh: str
    capacity: int
    batch_ms: int
    batch_resend_ms: int
    batch_idle_ms: int
    max_frame_bytes: int
    max_in_flight: int
    fenced_term: int | None
    last_ack_at: int | None
    received: int
    duplicates: int
    invalid: int
    overflow: int
    wrong_target: int
    batches_sent: int
    batches_resent: int
    batches_acked: int
    batches_fenced: int
    batches_rejected: int
    stale_acks: int
    discarded: int
    truncated: int
    invalid_view: int
    token: int | None
    def __init__(
        self,
        node: str,
        mesh: str,
        capacity: int,
        batch_ms: int = 1000,
        batch_resend_ms: int = 2000,
        batch_idle_ms: int = 10000,
        max_frame_bytes: int = 4096,
        max_in_flight: int = 2,
        token: int | None = None,
    ) -> None: ...
    @property
    def held(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    def add(self, msg_or_readings: Msg | list[_Reading], from_node: str | None = None) -> int: ...
    def pull_own(self, buffer: ReadingBuffer, now: int, term: int) -> int: ...
    def due_batch(
        self,
        now: int,
        term: int,
        members: Iterable[_Row] | Callable[[int], Iterable[_Row]] | None = None,
        elections: Iterable[_Row] | None = None,
    ) -> dict[str, Any] | None: ...
    def on_batch_ack(
        self,
        batch_id: int | str,
        status: int,
        now: int,
        own_buffer: ReadingBuffer | None = None,
        highest_term: int = 0,
    ) -> list[tuple[str, list[_Range]]]: ...
    def on_ack_msg(
        self, msg: Msg, now: int, own_buffer: ReadingBuffer | None = None
    ) -> list[tuple[str, list[_Range]]]: ...
    def lost_leadership(self) -> None: ...
