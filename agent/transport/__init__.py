"""One interface, two transports (UDP multicast, MQTT), same frames on both.

The node application (agent/core/app.py) owns the codec; transports move opaque bytes.
Received frames are handed to `on_frame(data, source)`; `source` is an address the transport
can send back to (UDP) or None (MQTT). The app remembers a node's source only after a frame
from it authenticated (`app.address(node)`), so a forged datagram cannot redirect readings.
"""

from __future__ import annotations

from typing import Any

from agent.transport.base import FrameHandler, Transport, format_address


def make_transport(cfg: Any, on_frame: FrameHandler, log: Any) -> Transport:
    if cfg.faults_file:
        from agent.faults import FaultFilter  # a lab's or the demo's partition on purpose

        on_frame = FaultFilter(cfg.faults_file, on_frame, log)
    if cfg.transport == "mqtt":
        from agent.transport.mqtt import MqttTransport

        return MqttTransport(cfg, on_frame, log)
    from agent.transport.udp import UdpTransport

    return UdpTransport(cfg, on_frame, log)


__all__ = ["FrameHandler", "Transport", "format_address", "make_transport"]
