"""Fan-out of live-feed events to Server-Sent-Events clients.

Loop-only (asyncio, like zeroconf's ``async_`` convention): publish from the event loop. Each
event is serialised once and shared by every subscriber. A client that cannot keep up is cut
off (its queue is bounded) instead of growing the gateway's memory; its browser's EventSource
reconnects and starts again from a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("meshelect.gateway.events")

# Per-client backlog before the client counts as stuck. A batch yields a few events; this is
# minutes of traffic for a small site and still bounded for a large one.
QUEUE_EVENTS = 2048
_CLOSE = b""


def encode_event(event: dict[str, Any]) -> bytes:
    """One SSE message: ``event: <type>`` and one ``data:`` line of JSON."""
    data = json.dumps(event, separators=(",", ":"))
    return ("event: %s\ndata: %s\n\n" % (event.get("type", "message"), data)).encode()


class Subscription:
    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_EVENTS)
        self.closed = False

    async def next(self, timeout: float) -> bytes | None:
        """The next encoded event, ``None`` after ``timeout`` s of quiet, ``b""`` when closed."""
        if self.closed and self.queue.empty():
            return _CLOSE
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self.published = 0
        self.cut_off = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def listen(self, listener: Callable[[list[dict[str, Any]]], None]) -> None:
        """Also hand every published list of events to ``listener`` (loop thread), as they
        are, before they are encoded for the browsers (gateway/homeassistant.py)."""
        self._listeners.append(listener)

    def publish(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a bug there must not cut the browsers' live feed
                log.exception("event listener failed")
        if not self._subscribers:
            return
        encoded = [encode_event(event) for event in events]
        self.published += len(encoded)
        for subscription in list(self._subscribers):
            try:
                for item in encoded:
                    subscription.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.cut_off += 1
                self._end(subscription)

    def close(self) -> None:
        """End every stream (at shutdown)."""
        for subscription in list(self._subscribers):
            self._end(subscription)

    def _end(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        subscription.closed = True
        # Drop its backlog (the browser reloads a fresh snapshot when it reconnects) and wake
        # a waiting reader with the end marker.
        while not subscription.queue.empty():
            subscription.queue.get_nowait()
        subscription.queue.put_nowait(_CLOSE)
