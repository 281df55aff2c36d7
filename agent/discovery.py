"""mDNS / DNS-SD discovery with python-zeroconf: advertise this agent, find peers of our own
mesh, the gateway and an MQTT broker, so a Pi needs no addresses typed in. A gateway that
withdraws its advertisement (it stopped) is lost: batches wait until one is found again.

    _meshelect._udp.local.      agents; TXT mesh, node, proto=1, role, score
    _meshelect-gw._udp.local.   gateways
    _mqtt._tcp.local.           brokers
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.transport import format_address

AGENT_TYPE = "_meshelect._udp.local."
GATEWAY_TYPE = "_meshelect-gw._udp.local."
BROKER_TYPE = "_mqtt._tcp.local."
PROTO = "1"
RESOLVE_TIMEOUT_MS = 3000
# Re-announcing costs multicast traffic on every host: only on a role change, or a score
# change this large, and not more often than this.
SCORE_CHANGE_TO_ANNOUNCE = 100
MIN_ANNOUNCE_INTERVAL_S = 5.0
RESOLVE_EVERY_S = 5.0

Address = tuple[str, int]


def _text(props: dict[bytes, bytes | None], key: str) -> str:
    value = props.get(key.encode())
    return value.decode("utf-8", "replace") if value else ""


class Discovery:
    """Runs in the agent's event loop; results arrive through the `on_*` callbacks."""

    def __init__(self, mesh: str, node: str, interface: str, port: int, log: Any) -> None:
        self.mesh = mesh
        self.node = node
        self.interface = interface  # IPv4 address; "" or 0.0.0.0: all interfaces
        self.port = port
        self.log = log
        self.peers: dict[str, Address] = {}
        self.gateway: Address | None = None  # the one in use, among those advertised
        self.broker: Address | None = None
        self.ignored_other_mesh = 0
        self.on_peer: Callable[[str, Address], None] | None = None
        self.on_peer_left: Callable[[str], None] | None = None
        # Called with the gateway to use, or None when the last one advertised left.
        self.on_gateway: Callable[[Address | None], None] | None = None
        self.on_broker: Callable[[Address], None] | None = None
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._names: dict[str, str] = {}  # service name -> node id
        self._gateways: dict[str, Address] = {}  # service name -> address: every gateway found
        self._resolving: set[str] = set()
        self._resolved_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._role = "follower"
        self._score = 0
        self._wanted = (self._role, self._score)
        self._registered = False
        self._announced_at = 0.0

    def _service_info(self) -> AsyncServiceInfo:
        address = self.interface if self.interface not in ("", "0.0.0.0") else "127.0.0.1"
        return AsyncServiceInfo(
            AGENT_TYPE,
            f"{self.mesh}-{self.node}.{AGENT_TYPE}",
            addresses=[socket.inet_aton(address)],
            port=self.port,
            properties={
                "mesh": self.mesh,
                "node": self.node,
                "proto": PROTO,
                "role": self._role,
                "score": str(self._score),
            },
            server=f"meshelect-{self.mesh}-{self.node}.local.",
        )

    async def start(self, role: str, score: int) -> None:
        self._role, self._score = role, score
        self._wanted = (role, score)
        interfaces: Any = [self.interface] if self.interface not in ("", "0.0.0.0") else None
        if interfaces is None:
            self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        else:
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self._info = self._service_info()
        # Registration probes for ~1.7 s: do it in the background so the election starts now.
        self._spawn(self._register())
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf,
            [AGENT_TYPE, GATEWAY_TYPE, BROKER_TYPE],
            handlers=[self._on_change],
        )

    async def _register(self) -> None:
        assert self._zc is not None
        assert self._info is not None
        try:
            # No renaming on a conflict: node ids are unique in a mesh, so a conflict is a
            # misconfiguration to report (renaming also raced with our own TXT updates).
            await self._zc.async_register_service(self._info, allow_name_change=False)
        except Exception as exc:  # mDNS is a convenience: the mesh works without it
            self.log.warning("mdns_register_failed", name=self._info.name, error=repr(exc))
            return
        self._registered = True
        self._announced_at = time.monotonic()
        self.log.info("mdns_registered", name=self._info.name)
        if (self._role, self._score) != self._wanted:
            self.update(*self._wanted)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def update(self, role: str, score: int) -> None:
        """Refresh our TXT record when the role changes or the score moved a lot."""
        self._wanted = (role, score)
        if self._zc is None or self._info is None or not self._registered:
            return  # _register announces the latest role once probing is done
        changed_role = role != self._role
        if not changed_role and abs(score - self._score) < SCORE_CHANGE_TO_ANNOUNCE:
            return
        if not changed_role and time.monotonic() - self._announced_at < MIN_ANNOUNCE_INTERVAL_S:
            return
        self._role, self._score = role, score
        self._announced_at = time.monotonic()
        self._info = self._service_info()
        self._spawn(self._reannounce(self._info))

    async def _reannounce(self, info: AsyncServiceInfo) -> None:
        assert self._zc is not None
        try:
            await self._zc.async_update_service(info)
        except Exception as exc:
            self.log.debug("mdns_update_failed", error=str(exc))

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._resolved_at.pop(name, None)
            gateway = self._gateways.pop(name, None)
            if gateway is not None:
                self._gateway_left(gateway)
                return
            node = self._names.pop(name, None)
            if node is not None and self.peers.pop(node, None) is not None:
                self.log.info("peer_left_mdns", peer=node)
                if self.on_peer_left is not None:
                    self.on_peer_left(node)
            return
        # Browsers report "Updated" on every TXT refresh; resolving each time makes every
        # host query every other host in a loop. One resolve per name at a time, and not
        # more often than RESOLVE_EVERY_S.
        now = time.monotonic()
        if name in self._resolving or now - self._resolved_at.get(name, -1e9) < RESOLVE_EVERY_S:
            return
        self._resolving.add(name)
        self._resolved_at[name] = now
        self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        try:
            await self._resolve_once(service_type, name)
        finally:
            self._resolving.discard(name)

    async def _resolve_once(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or not info.port:
            return
        address = (addresses[0], int(info.port))
        props = info.properties or {}
        if service_type == AGENT_TYPE:
            mesh, node = _text(props, "mesh"), _text(props, "node")
            if mesh != self.mesh:
                self.ignored_other_mesh += 1
                return
            if not node or node == self.node or _text(props, "proto") != PROTO:
                return
            self._names[name] = node
            if self.peers.get(node) != address:
                self.peers[node] = address
                self.log.info(
                    "peer_found_mdns",
                    peer=node,
                    address=format_address(address),
                    role=_text(props, "role"),
                    score=_text(props, "score"),
                )
                if self.on_peer is not None:
                    self.on_peer(node, address)
        elif service_type == GATEWAY_TYPE:
            self._gateways[name] = address
            self._use_gateway(address)
        elif service_type == BROKER_TYPE and self.broker is None:
            self.broker = address
            self.log.info("broker_found_mdns", address=format_address(address))
            if self.on_broker is not None:
                self.on_broker(address)

    def _use_gateway(self, address: Address) -> None:
        if self.gateway != address:
            self.gateway = address
            self.log.info("gateway_found_mdns", address=format_address(address))
            if self.on_gateway is not None:
                self.on_gateway(address)

    def _gateway_left(self, address: Address) -> None:
        """A gateway's advertisement went (its goodbye when it stopped, or it expired): go on
        with another one still advertised, else say once that it is lost."""
        if address != self.gateway or address in self._gateways.values():
            return  # not the one in use, or still advertised under another name
        if self._gateways:
            self._use_gateway(self._gateways[min(self._gateways)])
            return
        self.gateway = None
        self.log.warning("gateway_lost_mdns", address=format_address(address))
        if self.on_gateway is not None:
            self.on_gateway(None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        browser, self._browser = self._browser, None  # stop() may be called twice
        if browser is not None:
            await browser.async_cancel()
        if self._zc is not None:
            try:
                if self._info is not None:
                    await asyncio.wait_for(self._zc.async_unregister_service(self._info), 1.0)
            except Exception:
                pass  # not registered yet, or the network is gone: closing is enough
            zc, self._zc = self._zc, None
            await zc.async_close()
