"""mDNS/DNS-SD: the gateway advertises ``_meshelect-gw._udp.local.`` so leaders find its UDP port
(TXT: ``proto=1``, ``node``, and ``http`` with the dashboard's port)."""

from __future__ import annotations

import socket
from typing import Any

import ifaddr
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_meshelect-gw._udp.local."
PROTOCOL_VERSION = "1"


def local_ipv4_addresses() -> list[str]:
    """This host's IPv4 addresses, loopback last (used only when there is nothing else)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    outside = sorted(a for a in found if not a.startswith("127."))
    return outside or sorted(found)


class Advertiser:
    def __init__(self, node_id: str, udp_port: int, http_address: tuple[str, int] | None) -> None:
        self.node_id = node_id
        self.udp_port = udp_port
        self.http_port = http_address[1] if http_address else 0
        self._zeroconf: AsyncZeroconf | None = None
        self.info: AsyncServiceInfo | None = None

    async def start(self, interfaces: list[str] | None = None, bound: str = "0.0.0.0") -> None:
        """Advertise on ``interfaces`` (addresses), or on every interface when None.

        ``bound``: the UDP socket's address; a socket bound to one address is advertised with
        that address only (others could not reach it).
        """
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if interfaces:
            kwargs["interfaces"] = interfaces
            advertised = list(interfaces)
        elif bound not in ("", "0.0.0.0"):
            advertised = [bound]
        else:
            advertised = local_ipv4_addresses()
        addresses = [socket.inet_aton(address) for address in advertised]
        self._zeroconf = AsyncZeroconf(**kwargs)
        host = socket.gethostname().split(".")[0] or "meshelect"
        self.info = AsyncServiceInfo(
            SERVICE_TYPE,
            "%s-%s.%s" % (self.node_id, host, SERVICE_TYPE),
            port=self.udp_port,
            properties={
                "proto": PROTOCOL_VERSION,
                "node": self.node_id,
                "http": str(self.http_port),
            },
            server="%s.local." % host,
            addresses=addresses,
        )
        # allow_name_change: two gateways on one host get distinct instance names.
        await self._zeroconf.async_register_service(self.info, allow_name_change=True)

    async def stop(self) -> None:
        if self._zeroconf is None:
            return
        if self.info is not None:
            # The call hands back the sending of the goodbyes: wait for it, or closing cancels
            # them and leaders go on believing in a gateway that stopped.
            goodbyes = await self._zeroconf.async_unregister_service(self.info)
            await goodbyes
        await self._zeroconf.async_close()
        self._zeroconf = None
