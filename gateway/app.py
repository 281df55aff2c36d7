"""HTTP: JSON API, live feed (SSE), Prometheus metrics, health, and the dashboard's files.

Every read of gateway state goes through ``gateway.call`` (the one worker thread that owns the
database and the tracker), so requests never race the ingest path.

API (all JSON; times are gateway milliseconds since the epoch):

- ``GET /api/meshes``, ``GET /api/meshes/{mesh}``: live state (leader, term, members, alerts)
- ``GET /api/meshes/{mesh}/nodes``
- ``GET /api/meshes/{mesh}/readings?node=&since=&until=&limit=``: raw readings received in
  ``[since, until)``
- ``GET /api/meshes/{mesh}/aggregates?since=&until=&limit=``: the leaders' aggregates
- ``GET /api/elections?mesh=&limit=``, ``GET /api/alerts?mesh=&active=1&limit=``
- ``POST /api/alerts/{id}/clear``: needs ``Authorization: Bearer <token>``
- ``POST /api/meshes/{mesh}/fence-reset?term=N``: an operator resets the mesh's fence to ``N``
  (default 0), e.g. after a bogus batch raised it; needs the bearer token; logged, recorded,
  shown on the dashboard
- ``GET /api/events``: Server-Sent Events; first a ``snapshot``, then every change
- ``GET /metrics``, ``GET /healthz`` (status ``ok`` or ``degraded``, with ``problems``)
- with ``--ota-dir``: ``GET /ota/{bundle}/{file}``, a board's ``GET /ota/{bundle}/report?...``,
  ``GET /api/ota`` (gateway/ota.py)
- in demo mode only (``--demo-control``): ``GET /api/demo``, ``POST /api/demo/{action}``
  (gateway/democontrol.py)

A storage failure while answering (say, an I/O error) is a 503 with a JSON error.
"""

from __future__ import annotations

import hmac
import importlib.util
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.events import encode_event
from gateway.fence import MAX_TERM
from gateway.metrics import CONTENT_TYPE
from gateway.ota import OtaBundles
from gateway.storage import StorageError

if TYPE_CHECKING:
    from gateway.service import Gateway

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
MAX_LIMIT = 10_000
# A comment line every so often keeps proxies and the browser from timing the stream out.
SSE_KEEPALIVE_S = 15.0
_FAR_FUTURE_MS = 2**62


def plotly_js_path() -> str | None:
    """plotly.min.js as shipped inside the installed plotly wheel (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(
        next(iter(spec.submodule_search_locations)), "package_data", "plotly.min.js"
    )
    return path if os.path.exists(path) else None


def create_app(gateway: Gateway) -> Starlette:
    plotly_path = plotly_js_path()

    async def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    async def favicon(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "favicon.ico"), media_type="image/x-icon")

    async def plotly_js(request: Request) -> Response:
        if plotly_path is None:
            raise HTTPException(404, "plotly is not installed (pip install plotly)")
        return FileResponse(plotly_path, media_type="text/javascript")

    async def meshes(request: Request) -> Response:
        return JSONResponse(await gateway.call(gateway.ingest.mesh_states))

    async def mesh(request: Request) -> Response:
        name = await _known_mesh(gateway, request)
        return JSONResponse(await gateway.call(gateway.ingest.mesh_state, name))

    async def nodes(request: Request) -> Response:
        name = await _known_mesh(gateway, request)
        return JSONResponse(await gateway.call(gateway.ingest.storage.nodes, name))

    async def readings(request: Request) -> Response:
        name = await _known_mesh(gateway, request)
        since, until, limit = _range(request)
        node = request.query_params.get("node") or None
        rows = await gateway.call(gateway.ingest.storage.readings, name, node, since, until, limit)
        return JSONResponse(rows)

    async def aggregates(request: Request) -> Response:
        name = await _known_mesh(gateway, request)
        since, until, limit = _range(request)
        rows = await gateway.call(gateway.ingest.storage.aggregates, name, since, until, limit)
        return JSONResponse(rows)

    async def elections(request: Request) -> Response:
        name = await _optional_mesh(gateway, request)
        limit = _int_param(request, "limit", 200, 1, MAX_LIMIT)
        return JSONResponse(await gateway.call(gateway.ingest.storage.elections, name, limit))

    async def alerts(request: Request) -> Response:
        name = await _optional_mesh(gateway, request)
        limit = _int_param(request, "limit", 200, 1, MAX_LIMIT)
        active = request.query_params.get("active", "0") in ("1", "true", "yes")
        rows = await gateway.call(gateway.ingest.storage.alerts, name, active, limit)
        return JSONResponse(rows)

    async def clear_alert(request: Request) -> Response:
        _check_token(gateway.token, request)
        try:
            alert_id = int(request.path_params["alert_id"])
        except ValueError:
            raise HTTPException(400, "alert id must be an integer") from None
        found = await gateway.call(gateway.clear_alert_by_id, alert_id)
        if not found:
            raise HTTPException(404, "no open alert %d" % alert_id)
        return JSONResponse({"cleared": alert_id})

    async def fence_reset(request: Request) -> Response:
        _check_token(gateway.token, request)
        name = await _known_mesh(gateway, request)
        term = _int_param(request, "term", 0, 0, MAX_TERM)
        record = await gateway.call(gateway.reset_fence, name, term, "api")
        if record is None:
            raise HTTPException(404, "unknown mesh %r" % name)
        return JSONResponse(record)

    async def events(request: Request) -> Response:
        return StreamingResponse(
            _event_stream(gateway),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def metrics(request: Request) -> Response:
        body = await gateway.call(gateway.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse(await gateway.call(gateway.health))

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/vendor/plotly.min.js", plotly_js),
        Route("/api/meshes", meshes),
        Route("/api/meshes/{mesh}", mesh),
        Route("/api/meshes/{mesh}/nodes", nodes),
        Route("/api/meshes/{mesh}/readings", readings),
        Route("/api/meshes/{mesh}/aggregates", aggregates),
        Route("/api/elections", elections),
        Route("/api/alerts", alerts),
        Route("/api/alerts/{alert_id}/clear", clear_alert, methods=["POST"]),
        Route("/api/meshes/{mesh}/fence-reset", fence_reset, methods=["POST"]),
        Route("/api/events", events),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        *(gateway.demo.routes() if gateway.demo is not None else []),
        *(OtaBundles(gateway.config.ota_dir).routes() if gateway.config.ota_dir else []),
        Mount("/static", StaticFiles(directory=STATIC_DIR)),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _json_error, StorageError: _storage_error},
    )


async def _json_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, exc.status_code)


async def _storage_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "storage failing: %s" % exc, "status": 503}, 503)


async def _event_stream(gateway: Gateway) -> AsyncIterator[bytes]:
    subscription = gateway.hub.subscribe()
    gateway.counters.sse_clients += 1
    try:
        # Subscribe first, then take the snapshot: nothing published in between is missed
        # (a duplicate is harmless, the page applies events idempotently).
        snapshot = await gateway.call(gateway.snapshot)
        yield encode_event(snapshot)
        while True:
            item = await subscription.next(SSE_KEEPALIVE_S)
            if item is None:
                yield b": keepalive\n\n"
            elif item == b"":
                return
            else:
                yield item
    finally:
        gateway.counters.sse_clients -= 1
        subscription.close()


async def _known_mesh(gateway: Gateway, request: Request) -> str:
    name = request.path_params["mesh"]
    if not await gateway.call(gateway.has_mesh, name):
        raise HTTPException(404, "unknown mesh %r" % name)
    return str(name)


async def _optional_mesh(gateway: Gateway, request: Request) -> str | None:
    name = request.query_params.get("mesh")
    if name is None:
        return None
    if not await gateway.call(gateway.has_mesh, name):
        raise HTTPException(404, "unknown mesh %r" % name)
    return name


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, "%s must be an integer" % name) from None
    if not low <= value <= high:
        raise HTTPException(400, "%s must be between %d and %d" % (name, low, high))
    return value


def _range(request: Request) -> tuple[int, int, int]:
    since = _int_param(request, "since", 0, 0, _FAR_FUTURE_MS)
    until = _int_param(request, "until", _FAR_FUTURE_MS, 0, _FAR_FUTURE_MS)
    if until <= since:
        raise HTTPException(400, "until must be after since")
    return since, until, _int_param(request, "limit", 1000, 1, MAX_LIMIT)


def _check_token(token: str | None, request: Request) -> None:
    if not token:
        raise HTTPException(403, "write API disabled: start the gateway with --api-token")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "bad token")
