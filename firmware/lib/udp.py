"""UDP multicast sockets for the mesh transport and mDNS, the same on the board and unix port.

MicroPython's ``socket`` lacks ``IPPROTO_IP``, ``IP_MULTICAST_IF``, ``IP_MULTICAST_TTL`` and
``IP_MULTICAST_LOOP``, and their values differ by network stack: Linux (the unix port) uses
32, 33, 34; lwIP (ESP32 and the other MCU ports) uses 6, 5, 7 (lwip/sockets.h). They are
numbers here (consts: no interned names on a board), set on Linux only.

lwIP (the ESP32) accepts none of the three multicast options from MicroPython: its setsockopt
prints a warning per call and raises nothing, so they are not set there. lwIP sends multicast
from the default interface (a board has one) with its own TTL (``IP_DEFAULT_TTL``, not 1): the
mesh then relies on routers not forwarding 239.255.0.0/16 (administratively scoped), and drops
its own frames by node id, not by ``IP_MULTICAST_LOOP``.

Destination names are resolved once and kept (``getaddrinfo`` blocks: up to 5 s for a name on
the ESP32, enough to trip the watchdog); ``forget()`` drops them when the address changes.
Dotted addresses need no lookup and are not kept.

The mesh framing is the Pi agent's (docs/design.md): election frames to 239.255.77.77:47470
with TTL 1, READINGS / READINGS_ACK unicast to port 47470, the gateway on port 47471.
"""

import socket
import sys

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython (host-side tools)

    def const(x):
        return x


try:
    import asyncio
except ImportError:
    import uasyncio as asyncio  # type: ignore[no-redef]

MESH_GROUP = "239.255.77.77"
MESH_PORT = 47470
GATEWAY_PORT = 47471

_MICROPYTHON = sys.implementation.name == "micropython"
# The options' values: IPPROTO_IP is 0 everywhere; the multicast options are set only on Linux
# (the unix port; CPython, whose socket module has the same numbers), so Linux's values; the
# membership is lwIP's 3 on the boards. Consts, not module globals: no interned names.
_IPPROTO_IP = const(0)
_IP_MULTICAST_IF = const(32)
_IP_MULTICAST_TTL = const(33)
_IP_MULTICAST_LOOP = const(34)
_IP_ADD_MEMBERSHIP_LINUX = const(35)
_IP_ADD_MEMBERSHIP_LWIP = const(3)
_SO_REUSEPORT_LINUX = const(15)  # MicroPython's socket module does not name it; lwIP has none
_addrs = {}  # (ip, port) -> sockaddr, or None when the name did not resolve
_MAX_ADDRS = const(16)


def _aton(ip):
    return bytes(int(x) for x in ip.split("."))


def open_multicast(group, port, ip, ttl=1, loop=False, bind_ip="0.0.0.0"):
    """A non-blocking UDP socket bound to ``bind_ip:port``, joined to ``group`` on the interface of address ``ip``.

    Bound to the group address (``bind_ip=group``) it receives only that group's datagrams,
    never unicast: several nodes on one host then share the port (SO_REUSEPORT).

    ``loop=False`` stops our own datagrams coming back to us (the kernel drops them), so the
    mesh does not hear itself. Raises OSError when the interface or port is unusable.
    """
    linux = sys.platform == "linux"  # (a local: a global's name stays interned)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if linux:
            try:
                s.setsockopt(socket.SOL_SOCKET, _SO_REUSEPORT_LINUX, 1)
            except OSError:
                pass  # lwIP has no SO_REUSEPORT; one node per board anyway
        s.bind(_sockaddr(bind_ip, port))
        membership = _IP_ADD_MEMBERSHIP_LINUX if linux else _IP_ADD_MEMBERSHIP_LWIP
        s.setsockopt(_IPPROTO_IP, membership, _aton(group) + _aton(ip))
        if linux:  # not on lwIP (every MicroPython port but unix)
            s.setsockopt(_IPPROTO_IP, _IP_MULTICAST_IF, _aton(ip))
            s.setsockopt(_IPPROTO_IP, _IP_MULTICAST_TTL, ttl)
            s.setsockopt(_IPPROTO_IP, _IP_MULTICAST_LOOP, 1 if loop else 0)
        s.setblocking(False)
    except Exception:
        s.close()
        raise
    return s


def open_unicast(ip, port=0):
    """A non-blocking UDP socket bound to ``ip:port`` (gateway traffic)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(_sockaddr(ip, port))
        s.setblocking(False)
    except Exception:
        s.close()
        raise
    return s


def _sockaddr(ip, port):
    if _MICROPYTHON:
        return socket.getaddrinfo(ip, port)[0][-1]
    return (ip, port)


def forget():
    """Drop the resolved destinations (the runtime calls it when its address changes)."""
    _addrs.clear()


def send(sock, data, ip, port):
    """Send one datagram; a transient error or a name that did not resolve is returned as
    False (counted by the caller)."""
    key = (ip, port)
    if key in _addrs:
        addr = _addrs[key]
    elif _MICROPYTHON and not ip.replace(".", "").isdigit():
        if len(_addrs) >= _MAX_ADDRS:
            _addrs.clear()  # destinations are few (gateway, peers, groups): a rare refill
        try:
            addr = socket.getaddrinfo(ip, port)[0][-1]
        except (OSError, IndexError):
            addr = None  # not retried on every send: forget() (a new address) asks again
        _addrs[key] = addr
    elif _MICROPYTHON:
        # A dotted address: no lookup, no wait; not kept (a peer each: heap on a leader).
        addr = socket.getaddrinfo(ip, port)[0][-1]
    else:
        addr = key
    if addr is None:
        return False
    try:
        sock.sendto(data, addr)
        return True
    except OSError:
        return False


def peer(addr):
    """(ip str, port) from what ``recvfrom`` returned, on either runtime."""
    if isinstance(addr, tuple):
        return addr[0], addr[1]
    # MicroPython unix port: a raw sockaddr; socket.sockaddr decodes it
    # (family, 4 raw address bytes, port)
    decoded = socket.sockaddr(addr)
    ip = decoded[1]
    if not isinstance(ip, str):
        ip = "%d.%d.%d.%d" % (ip[0], ip[1], ip[2], ip[3])
    return ip, decoded[2]


async def recv(sock, size=1500):
    """Wait for one datagram: -> (bytes, (ip, port)). Never blocks the loop."""
    while True:
        try:
            data, addr = sock.recvfrom(size)
            return data, peer(addr)
        except OSError:
            pass
        await _wait_readable(sock)


if hasattr(asyncio, "core") and hasattr(asyncio.core, "_io_queue"):

    def _wait_readable(sock):  # MicroPython: park the task until the socket is readable
        yield asyncio.core._io_queue.queue_read(sock)

else:

    async def _wait_readable(sock):  # CPython fallback used only by host-side tools
        await asyncio.sleep(0.005)
