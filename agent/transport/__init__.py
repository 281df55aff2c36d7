"""One interface, two transports (UDP multicast, MQTT), same frames on both.

The node application (agent/core/app.py) owns the codec; transports move opaque bytes.
Received frames are handed to `on_frame(data, source)`; `source` is an address the transport
can send back to (UDP) or None (MQTT). The app remembers a node's source only after a frame
from it authenticated (`app.address(node)`), so a forged datagram cannot redirect readings.
"""

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


def make_transport(cfg: Any, on_frame: FrameHandler, log: Any) -> Transport:
    if cfg.transport == "mqtt":
        from agent.transport.mqtt import MqttTransport

        return MqttTransport(cfg, on_frame, log)
    from agent.transport.udp import UdpTransport

    return UdpTransport(cfg, on_frame, log)


__all__ = ["FrameHandler", "Transport", "format_address", "make_transport"]
