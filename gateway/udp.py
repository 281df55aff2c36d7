"""UDP ingest: leaders send BATCH frames to the gateway's port; the BATCH_ACK goes back to the
source address of the frame (the leader's socket).

The socket is read directly from the event loop (``add_reader``), up to ``READS_PER_WAKE``
datagrams per wake-up: asyncio's datagram transport reads one per loop iteration, and under
load the loop's own overhead per datagram was a large share of the gateway's time. The
frames of one wake-up then travel the frame path together (gateway/pipeline.py).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.service import Gateway

# Bursts of batches from many leaders must not overflow the kernel buffer between two loop
# iterations; 1 MiB holds a few hundred full-size frames.
RECEIVE_BUFFER_BYTES = 1 << 20
# Datagrams read per wake-up before the loop runs its other work (HTTP, timers).
READS_PER_WAKE = 64
# Larger than any frame the gateway takes (wire.MAX_FRAME_BYTES): a bigger datagram is read
# whole and dropped as too big, not truncated into something else.
_DATAGRAM_BYTES = 65536


class UdpIngest:
    def __init__(self, gateway: Gateway, sock: socket.socket) -> None:
        self.gateway = gateway
        self.sock = sock
        sockname = sock.getsockname()
        self.address: tuple[str, int] = (sockname[0], sockname[1])
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        on_frame = self.gateway.on_frame
        for _ in range(READS_PER_WAKE):
            try:
                data, addr = self.sock.recvfrom(_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An ICMP error for an ack to a leader that went away: nothing to do, count.
                self.gateway.counters.count_drop("udp", "send_error")
                continue
            on_frame("udp", data, self._replier(addr))

    def _replier(self, addr: Any) -> Any:
        def reply(mesh: str, leader: str, ack: bytes) -> None:
            if self.sock.fileno() < 0:
                return  # closed: the gateway is stopping
            try:
                self.sock.sendto(ack, addr)
            except OSError:
                # A full send buffer, an unreachable leader: the ack is lost as on the air,
                # and the leader sends its batch again.
                self.gateway.counters.count_drop("udp", "send_error")

        return reply

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def open_udp(gateway: Gateway, host: str, port: int) -> UdpIngest:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return UdpIngest(gateway, sock)
