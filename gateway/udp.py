"""UDP ingest: leaders send BATCH frames to the gateway's port; the BATCH_ACK goes back to the
source address of the frame (the leader's socket)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.service import Gateway

# Bursts of batches from many leaders must not overflow the kernel buffer between two loop
# iterations; 1 MiB holds a few hundred full-size frames.
RECEIVE_BUFFER_BYTES = 1 << 20


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        transport = self.transport

        def reply(mesh: str, leader: str, ack: bytes) -> None:
            if transport is not None and not transport.is_closing():
                transport.sendto(ack, addr)

        self.gateway.on_frame("udp", data, reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for an ack to a leader that went away: nothing to do, just count.
        self.gateway.counters.count_drop("udp", "send_error")


class UdpIngest:
    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        sockname = transport.get_extra_info("sockname")
        self.address: tuple[str, int] = (sockname[0], sockname[1])

    def close(self) -> None:
        self.transport.close()


async def open_udp(gateway: Gateway, host: str, port: int) -> UdpIngest:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(gateway), sock=sock)
    return UdpIngest(transport)
