"""UDP transport: election frames on a multicast group (TTL 1), readings and acks unicast.

Sockets:
- one socket bound to `udp.unicast_port` sends everything (so peers learn our unicast address
  from the source of our heartbeats) and receives readings, acks and batch acks;
- when the unicast port is the group port (the default, one agent per host) that same socket
  also joins the group; otherwise (several agents on one host, as in the loopback demo) a
  second socket bound to the group address with SO_REUSEPORT receives the multicast.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
from typing import Any

from agent.transport.base import FrameHandler, Transport, format_address

SIOCGIFADDR = 0x8915
RECEIVE_BUFFER = 1 << 18  # room for a burst of heartbeats while the loop is busy
OWN_FRAMES_REMEMBERED = 8  # frames carry a counter, so a match is our own frame


def interface_address(interface: str, group: str) -> str:
    """An IPv4 address for `interface` (address or name); empty: the multicast route's."""
    if interface:
        try:
            socket.inet_aton(interface)
            return interface
        except OSError:
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            request = struct.pack("256s", interface.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
            except OSError as exc:
                raise OSError(f"interface {interface!r} has no IPv4 address: {exc}") from None
            return socket.inet_ntoa(reply[20:24])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((group, 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "0.0.0.0"


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data in self.owner.own_frames:
            return  # our own multicast, looped back for agents sharing this host
        self.owner.received += 1
        self.owner.on_frame(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.owner.send_errors += 1
        self.owner.log.warning("udp_error", error=str(exc))


class UdpTransport(Transport):
    name = "udp"

    def __init__(self, cfg: Any, on_frame: FrameHandler, log: Any) -> None:
        super().__init__(on_frame)
        self.cfg = cfg.udp
        self.log = log
        self.group = (self.cfg.group, self.cfg.port)
        self.gateway: tuple[str, int] | None = None
        self.received = 0
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self._endpoints: list[asyncio.DatagramTransport] = []
        self._sender: asyncio.DatagramTransport | None = None
        self.own_frames: list[bytes] = []

    def _join(self, sock: socket.socket, iface: str) -> None:
        membership = socket.inet_aton(self.cfg.group) + socket.inet_aton(iface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)

    def _open_sockets(self, iface: str) -> list[socket.socket]:
        unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        unicast.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        unicast.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.cfg.ttl)
        unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(self.cfg.loop))
        if iface != "0.0.0.0":
            unicast.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
        sockets = [unicast]
        if self.cfg.unicast_port == self.cfg.port:
            unicast.bind(("0.0.0.0", self.cfg.port))
            self._join(unicast, iface)
        else:
            unicast.bind((iface, self.cfg.unicast_port))
            group = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            group.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            group.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            # Bound to the group address: only this group's datagrams, never unicast.
            group.bind((self.cfg.group, self.cfg.port))
            self._join(group, iface)
            sockets.append(group)
        for sock in sockets:
            sock.setblocking(False)
        return sockets

    async def start(self) -> None:
        iface = interface_address(self.cfg.interface, self.cfg.group)
        sockets = self._open_sockets(iface)
        loop = asyncio.get_running_loop()
        for sock in sockets:
            endpoint, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=sock)
            self._endpoints.append(endpoint)
        self._sender = self._endpoints[0]
        host, port = sockets[0].getsockname()[:2]
        self.local = (iface if host == "0.0.0.0" else host, port)
        self.log.info(
            "udp_started",
            group=format_address(self.group),
            interface=iface,
            unicast=format_address(self.local),
        )

    async def stop(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints = []
        self._sender = None

    def _send(self, frame: bytes, address: tuple[str, int]) -> bool:
        if self._sender is None:
            return False
        try:
            self._sender.sendto(frame, address)
        except OSError as exc:
            self.send_errors += 1
            self.log.warning("udp_send_failed", to=format_address(address), error=str(exc))
            return False
        self.sent += 1
        return True

    def send_election(self, frame: bytes) -> None:
        self.own_frames.append(frame)
        if len(self.own_frames) > OWN_FRAMES_REMEMBERED:
            del self.own_frames[0]
        self._send(frame, self.group)

    def send_to(self, node: str, kind: int, frame: bytes, address: Any) -> bool:
        return address is not None and self._send(frame, address)

    def send_batch(self, frame: bytes) -> bool:
        return self.gateway is not None and self._send(frame, self.gateway)

    def set_gateway(self, address: tuple[str, int] | None) -> None:
        if address is not None:
            try:
                address = (socket.gethostbyname(address[0]), address[1])
            except OSError as exc:
                self.log.warning("gateway_unresolved", host=address[0], error=str(exc))
                return
        if address != self.gateway:
            self.gateway = address
            self.log.info("gateway_set", address=format_address(address) if address else "none")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["local"] = format_address(self.local)
        info["gateway"] = format_address(self.gateway) if self.gateway else None
        info["received"] = self.received
        return info
