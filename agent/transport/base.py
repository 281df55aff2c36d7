"""The interface every transport implements (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FrameHandler = Callable[[bytes, Any], None]


class Transport:
    """Base class; subclasses override the sends. All methods run in the event loop."""

    name = "none"

    def __init__(self, on_frame: FrameHandler) -> None:
        self.on_frame = on_frame
        self.connected = True
        self.sent = 0
        self.send_errors = 0

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def send_election(self, frame: bytes) -> None:
        """Broadcast an election frame (heartbeat, claim, handoff, leave) to the mesh."""
        raise NotImplementedError

    def send_to(self, node: str, kind: int, frame: bytes, address: Any) -> bool:
        """Member -> leader (READINGS) or leader -> member (READINGS_ACK). `address`: where
        `node`'s frames came from (UDP; None: not heard yet). False: not sent (the data path
        sends it again later)."""
        raise NotImplementedError

    def send_batch(self, frame: bytes) -> bool:
        """Leader -> gateway. False when no gateway is known yet."""
        raise NotImplementedError

    def set_gateway(self, address: tuple[str, int] | None) -> None:
        """UDP: where batches go (from the config or mDNS)."""

    def publish_leader(self, term: int, leader: str, record: bytes) -> None:
        """MQTT: the retained leader record. UDP: nothing to do."""

    def describe(self) -> dict[str, Any]:
        return {"transport": self.name, "connected": self.connected, "sent": self.sent}


def format_address(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
