from collections.abc import Callable
from typing import Any, Final

from agent.core.auth import Key
from agent.core.messages import Msg

# What the codec reads, and passes on to ``loads``: a frame or a slice of it.
_Bytes = bytes | bytearray | memoryview

VERSION: Final = 1
MAX_FRAME_BYTES: Final = 4096
REPLAY_FORGET_MS: Final = 60000

TOO_BIG: Final = "too_big"
MALFORMED: Final = "malformed"
BAD_VERSION: Final = "version"
OTHER_MESH: Final = "other_mesh"
BAD_TAG: Final = "bad_tag"
BAD_FIELD: Final = "bad_field"
REPLAYED: Final = "replayed"
NO_BATCHES: Final = "no_batches"
REASONS: tuple[str, ...]

class WireError(ValueError):
    reason: str
    def __init__(self, reason: str, detail: str = "") -> None: ...

def mesh_hash(name: str | bytes) -> int: ...
def next_boot(stored: int, unix_s: float | None) -> int: ...

class Codec:
    mesh: str
    mesh_hash: int
    boot: int
    counter: int
    max_senders: int
    check_batch: Callable[[Any], str | None] | None
    drops: dict[str, int]
    accepted: int
    evicted: int
    def __init__(
        self,
        mesh: str,
        key: bytes | bytearray | str | Key | None,
        dumps: Callable[[Any], _Bytes],
        loads: Callable[[_Bytes], Any],
        boot: int = 0,
        max_senders: int = 64,
        check_batch: Callable[[Any], str | None] | None = None,
    ) -> None: ...
    def encode(self, msg: Msg) -> bytes | bytearray: ...
    def decode(self, data: _Bytes, now: int) -> Msg: ...
    def forget(self, sender: str) -> None: ...
