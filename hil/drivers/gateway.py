"""``MeshGatewayDriver``: the gateway's JSON API (mesh state, readings, health) for tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory

from hil.drivers.common import HilError, bench_of, wait_until
from hil.nsthread import NamespaceThread

HTTP_TIMEOUT_S = 5.0
READINGS_LIMIT = 10000  # the gateway API's maximum page


@target_factory.reg_driver
@attr.s(eq=False)
class MeshGatewayDriver(Driver):
    """Binds a ``MeshGateway``; on activation waits until the API answers (``start_s``)."""

    bindings: ClassVar[dict[str, Any]] = {"gateway": "MeshGateway"}
    start_s: float = attr.ib(default=20.0, validator=attr.validators.instance_of(float))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.url = ""
        self._thread: NamespaceThread | None = None

    def on_activate(self) -> None:
        resource: Any = self.gateway
        url, netns = resource.url, resource.netns
        if not url and resource.bench:
            bench = bench_of(self.target, resource.bench)
            url, netns = bench.gateway_url, bench.gateway_netns
        if not url.startswith(("http://", "https://")):
            raise HilError("%s: MeshGateway needs url (http://...) or bench" % self.target.name)
        self.url = url.rstrip("/")
        self._thread = NamespaceThread(netns) if netns else None
        self.wait_healthy(self.start_s)

    def on_deactivate(self) -> None:
        if self._thread is not None:
            self._thread.close()
            self._thread = None

    @Driver.check_active
    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` (JSON); None on 404; ``HilError`` on anything else that fails."""
        return self._get(path, **params)

    def _get(self, path: str, **params: Any) -> Any:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if self._thread is not None:
            return self._thread.call(get_json, url)
        return get_json(url)

    def healthy(self) -> bool:
        try:
            return self._get("/healthz") is not None
        except HilError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_until(self.healthy, timeout, "gateway %s to answer" % self.url)

    def mesh(self, mesh: str) -> dict[str, Any] | None:
        state = self.get("/api/meshes/%s" % urllib.parse.quote(mesh, safe=""))
        return state if isinstance(state, dict) else None

    def leader(self, mesh: str) -> tuple[str | None, int]:
        """(leader, term) as the gateway last saw it; (None, 0) before the first batch."""
        state = self.mesh(mesh) or {}
        leader = state.get("leader")
        return (leader if isinstance(leader, str) else None), int(state.get("term") or 0)

    def readings(self, mesh: str, node: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": READINGS_LIMIT}
        if node is not None:
            params["node"] = node
        rows = self.get("/api/meshes/%s/readings" % urllib.parse.quote(mesh, safe=""), **params)
        return rows if isinstance(rows, list) else []

    def stored(self, mesh: str) -> dict[tuple[str, int], list[int]]:
        """(node, boot) -> every seq stored, sorted, duplicates kept (so they can be seen)."""
        out: dict[tuple[str, int], list[int]] = {}
        for row in self.readings(mesh):
            out.setdefault((str(row["node"]), int(row["boot"])), []).append(int(row["seq"]))
        return {key: sorted(seqs) for key, seqs in out.items()}


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise HilError("GET %s: HTTP %d" % (url, exc.code)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HilError("GET %s: %s" % (url, exc)) from None
