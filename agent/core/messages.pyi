from typing import Any, Final

HEARTBEAT: Final = 1
CLAIM: Final = 2
HANDOFF: Final = 3
LEAVE: Final = 4
PROBE: Final = 5
READINGS: Final = 8
READINGS_ACK: Final = 9
BATCH: Final = 10
BATCH_ACK: Final = 11

F_LEADER: Final = 1
F_CANDIDATE: Final = 2
F_MAINS: Final = 4
F_LOW_BATTERY: Final = 8
F_LEAVING: Final = 16
F_SLEEPY: Final = 32

ACK_OK: Final = 0
ACK_FENCED: Final = 1
ACK_REJECTED: Final = 2

class Msg:
    kind: int
    sender: str
    boot: int
    counter: int
    term: int
    flags: int
    score: int
    heard: int
    battery: int
    link: int
    target: str | None
    # READINGS: list of readings; READINGS_ACK: list of ranges; BATCH: the batch map;
    # BATCH_ACK: [batch_id, status, highest_term]; None for the election kinds.
    body: Any
    def __init__(
        self,
        kind: int,
        sender: str,
        term: int = 0,
        flags: int = 0,
        score: int = 0,
        heard: int = 0,
        battery: int = 0,
        link: int = 0,
        target: str | None = None,
        body: Any = None,
        boot: int = 0,
        counter: int = 0,
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
