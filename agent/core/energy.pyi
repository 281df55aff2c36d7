from typing import Any

class Energy:
    settings: list[int]
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
