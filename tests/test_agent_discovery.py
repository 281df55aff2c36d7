"""Real python-zeroconf on loopback: agents find peers of their own mesh only, notice a peer
leaving, and find a gateway and a broker by their service types."""

from __future__ import annotations

import asyncio
import io
import socket

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from agent.discovery import BROKER_TYPE, GATEWAY_TYPE, Discovery
from agent.logs import EventLog

WAIT_S = 10.0


async def _until(predicate, timeout: float = WAIT_S) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_peers_of_own_mesh_gateway_broker_and_leaving() -> None:
    logs = io.StringIO()
    a = Discovery("t-disc", "a", "127.0.0.1", 40101, EventLog("a", "json", logs))
    b = Discovery("t-disc", "b", "127.0.0.1", 40102, EventLog("b", "json", io.StringIO()))
    stranger = Discovery("t-other", "c", "127.0.0.1", 40103, EventLog("c", "json", io.StringIO()))
    found_gw: list[tuple[str, int]] = []
    found_broker: list[tuple[str, int]] = []
    left: list[str] = []
    a.on_gateway = found_gw.append
    a.on_broker = found_broker.append
    a.on_peer_left = left.append
    services = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    infos = [
        AsyncServiceInfo(
            GATEWAY_TYPE,
            "t-disc-gw.%s" % GATEWAY_TYPE,
            addresses=[socket.inet_aton("127.0.0.1")],
            port=47471,
            properties={"proto": "1"},
        ),
        AsyncServiceInfo(
            BROKER_TYPE,
            "t-disc-broker.%s" % BROKER_TYPE,
            addresses=[socket.inet_aton("127.0.0.1")],
            port=18831,
        ),
    ]
    try:
        for info in infos:
            await services.async_register_service(info)
        for d in (a, b, stranger):
            await d.start("follower", 500)
        assert await _until(lambda: "b" in a.peers and "a" in b.peers)
        # Ours among what is found: a gateway or broker of another run on this host's loopback
        # is found too (mDNS is host-wide), and may come first.
        assert await _until(
            lambda: ("127.0.0.1", 47471) in found_gw and ("127.0.0.1", 18831) in found_broker
        ), (found_gw, found_broker)
        assert await _until(lambda: a.ignored_other_mesh >= 1)
        assert "c" not in a.peers
        await b.stop()  # unregisters: a goodbye on the wire
        assert await _until(lambda: left == ["b"])
        assert '"event":"peer_left_mdns"' in logs.getvalue()
    finally:
        for d in (a, b, stranger):
            await d.stop()
        await services.async_close()
