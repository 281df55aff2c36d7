"""Over-the-air update bundles served by the gateway, and the boards' reports on them.

With ``--ota-dir DIR`` (bundles made by ``meshelect firmware ota bundle``, one folder each),
``GET /ota/<bundle>/<file>`` serves them to boards, and ``GET /ota/<bundle>/report?node=..
&state=..&pct=..&version=..&new=..&reason=..`` (what a board sends at every step of an update,
firmware/app/ota.py) is kept per node: ``GET /api/ota`` lists the last report of each, and the
dashboard shows them. ``meshelect firmware ota push --url http://gw/ota/<bundle>/ --gateway
http://gw`` follows an update there. Reports are kept in memory, at most ``MAX_NODES``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

# What a board reports (firmware/app/ota.py), the same list as tools/ota.py's.
STATES = ("idle", "downloading", "verifying", "pending", "trial", "rolled-back", "failed")
MAX_NODES = 4096
MAX_FIELD = 64


class OtaBundles:
    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.reports: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/api/ota", self.listing),
            Route("/ota/{bundle}/report", self.report),
            Route("/ota/{bundle}/{path:path}", self.file),
        ]

    async def listing(self, request: Request) -> Response:
        return JSONResponse(sorted(self.reports.values(), key=lambda r: r["node"]))

    async def report(self, request: Request) -> Response:
        q = request.query_params
        node, state = q.get("node", ""), q.get("state", "")
        if not node or state not in STATES or len(node) > MAX_FIELD:
            raise HTTPException(400, "a report needs node and a known state")
        if node not in self.reports and len(self.reports) >= MAX_NODES:
            raise HTTPException(429, "too many nodes")
        pct = q.get("pct", "0")
        self.reports[node] = {
            "node": node,
            "bundle": request.path_params["bundle"][:MAX_FIELD],
            "state": state,
            "pct": int(pct) if pct.isdigit() and len(pct) < 4 else 0,
            "version": q.get("version", "")[:MAX_FIELD],
            "new": q.get("new", "")[:MAX_FIELD],
            "reason": q.get("reason", "")[:MAX_FIELD],
            "at": time.time(),
        }
        return Response(status_code=200)

    async def file(self, request: Request) -> Response:
        path = (self.root / request.path_params["bundle"] / request.path_params["path"]).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise HTTPException(404, "no such bundle file")
        return FileResponse(path, media_type="application/octet-stream")
