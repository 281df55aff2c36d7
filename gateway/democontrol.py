"""Demo mode: the dashboard's buttons that break `meshelect demo` on purpose.

Only a gateway started with ``--demo-control PATH`` has any of this; `meshelect demo` passes
the path of its control socket (the protocol is in agent/democontrol.py). Then:

- ``GET /api/demo``: ``{"actions": {name: label}, "connected": bool, "partitioned": bool,
  "recent": [event, ...]}``, the dashboard shows its buttons when this answers
- ``POST /api/demo/{action}``: the demo does it (kill, stop, drain, partition, heal); 200
  ``{"event": ...}``, 409 ``{"error": why not}`` (say, no leader right now), 503 when the demo
  does not answer. The request must carry the header ``X-Meshelect-Demo: 1``: a form or a
  simple request from a page of another site cannot, so no web page elsewhere can drive the
  demo through the user's browser.
- on the live feed, an ``operator`` event for every action done (by a button or a key in the
  demo's terminal): ``{"type": "operator", "mesh", "action", "node", "text", "source",
  "at_ms"}``; the dashboard lists it with the elections it causes.

A gateway without the option answers 404 on these routes, like on any unknown path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from gateway.service import Gateway

log = logging.getLogger("meshelect.gateway.demo")

HEADER = "x-meshelect-demo"
RECENT = 50  # operator events kept for a page that loads later
RECONNECT_S = 1.0
REQUEST_TIMEOUT_S = 10.0
_MAX_LINE = 65536
_TEXT_FIELDS = ("mesh", "action", "text", "source")


class DemoControl:
    """The gateway's side of the demo's control socket (loop thread only)."""

    def __init__(self, gateway: Gateway, path: str) -> None:
        self.gateway = gateway
        self.path = path
        self.connected = False
        self.partitioned = False
        self.actions: dict[str, str] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.bad_lines = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="demo-control")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- watching the demo's events ----------------------------------------------------------

    async def _watch(self) -> None:
        """Stay connected as a watcher; the demo may start after us or go away."""
        while True:
            writer = None
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=_MAX_LINE)
                writer.write(b'{"watch": true}\n')
                await writer.drain()
                hello = _object(await reader.readline())
                if hello is None or hello.get("ok") is not True:
                    raise ConnectionError("the demo refused to be watched")
                self._hello(hello)
                self.connected = True
                while line := await reader.readline():
                    message = _object(line)
                    event = message.get("event") if message is not None else None
                    self._take(event)
            except (OSError, ValueError, ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.connected = False
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RECONNECT_S)

    def _hello(self, hello: dict[str, Any]) -> None:
        actions = hello.get("actions")
        if isinstance(actions, dict):
            self.actions = {str(k): str(v) for k, v in actions.items()}
        self.partitioned = hello.get("partitioned") is True

    def _take(self, event: Any) -> None:
        """One operator event from the demo: checked, kept, published."""
        clean = _clean_event(event)
        if clean is None:
            self.bad_lines += 1
            log.warning("dropped a malformed event from the demo: %.200r", event)
            return
        if clean["action"] in ("partition", "heal"):
            self.partitioned = clean["action"] == "partition"
        self.recent.append(clean)
        self.gateway.hub.publish([dict(clean, type="operator")])

    # -- asking the demo -------------------------------------------------------------------

    async def request(self, action: str) -> dict[str, Any]:
        """The demo's answer to ``{"do": action}``; OSError/TimeoutError if it does not answer."""
        reader, writer = await asyncio.open_unix_connection(self.path, limit=_MAX_LINE)
        try:
            writer.write((json.dumps({"do": action}) + "\n").encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
        finally:
            writer.close()
        reply = _object(line)
        if reply is None:
            raise OSError("the demo sent no answer")
        return reply

    # -- HTTP ------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        async def info(request: Request) -> Response:
            return JSONResponse(
                {
                    "actions": self.actions,
                    "connected": self.connected,
                    "partitioned": self.partitioned,
                    "recent": list(self.recent),
                }
            )

        async def act(request: Request) -> Response:
            if request.headers.get(HEADER) != "1":
                raise HTTPException(403, "demo actions need the header X-Meshelect-Demo: 1")
            action = request.path_params["action"]
            if self.actions and action not in self.actions:
                raise HTTPException(404, "no demo action %r" % action)
            try:
                reply = await self.request(action)
            except (OSError, TimeoutError) as exc:
                raise HTTPException(503, "the demo does not answer: %s" % exc) from None
            if reply.get("ok") is not True:
                raise HTTPException(409, str(reply.get("error") or "the demo refused"))
            return JSONResponse({"event": _clean_event(reply.get("event"))})

        return [
            Route("/api/demo", info),
            Route("/api/demo/{action}", act, methods=["POST"]),
        ]


def _object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _clean_event(event: Any) -> dict[str, Any] | None:
    """The fields the dashboard uses, type-checked; None if the event is not one."""
    if not isinstance(event, dict):
        return None
    if not all(isinstance(event.get(k), str) for k in _TEXT_FIELDS):
        return None
    node = event.get("node")
    at_ms = event.get("at_ms")
    if not (node is None or isinstance(node, str)) or type(at_ms) is not int:
        return None
    clean = {k: event[k][:200] for k in _TEXT_FIELDS}
    clean["node"] = node
    clean["at_ms"] = at_ms
    return clean
