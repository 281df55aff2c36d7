from typing import Any, Final

LEADER: Final = 0
MEMBER: Final = 1
SLEEPY: Final = 2
SETTINGS: tuple[tuple[str, int, int, int], ...]

class Energy:
    settings: list[int]
    report_ms: int
    idle: int
    sleepy: bool
    role: int
    since: int
    counts: list[int]
    part: list[int]
    slept: int
    def __init__(
        self,
        now: int,
        settings: dict[str, Any] | None = None,
        modem: bool = False,
        sleepy: bool = False,
    ) -> None: ...
    def tick(self, now: int, leading: bool = False) -> None: ...
    def frame(self, sent: bool, size: int) -> None: ...
    def charge(self, role: int) -> int: ...
    def reading(self, now: int) -> dict[str, int]: ...
    def state(self) -> list[int]: ...
    def restore(self, state: Any, slept_ms: int) -> None: ...
