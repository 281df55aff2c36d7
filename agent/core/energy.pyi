from typing import Any

SETTINGS: tuple[tuple[str, int, int, int], ...]

class Energy:
    settings: list[int]
    report_ms: int
    idle: int
    role: int
    since: int
    counts: list[int]
    def __init__(
        self,
        now: int,
        settings: dict[str, Any] | None = None,
        modem: bool = False,
        sleepy: bool = False,
    ) -> None: ...
    def tick(self, now: int, leader: bool = False) -> None: ...
    def frame(self, sent: bool, size: int) -> None: ...
    def charge(self, role: int) -> int: ...
    def reading(self, now: int) -> dict[str, int]: ...
    def state(self) -> list[int]: ...
    def restore(self, state: Any, ms: int) -> None: ...
