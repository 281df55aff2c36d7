"""The frame path through the gateway: arrived -> decoded -> stored (group commit) -> acked.

Frames arrive on the event loop (UDP reads a burst per wake-up, MQTT hands them over one by
one) and wait in the inbox, which goes on as one group once the loop is done with that
wake-up. Without a decoder process (the default) the group queues for the worker, which
decodes each group itself before storing it; with one (``--decode-process``,
gateway/decoder.py) the group goes to it, and its results queue for the worker, so decoding
the next frames overlaps storing these. The worker stores what is queued a group at a time,
back to back, one transaction each (:meth:`gateway.ingest.Ingest.receive_many`); once that
commit is done, the group's acks and live-feed events go back to the loop, which sends the acks
while the worker stores the next group.

Every frame taken in counts against ``MAX_PENDING_FRAMES`` until it is answered or dropped:
past that, new frames are dropped (counted ``overload``); leaders resend what is not
acknowledged, so shedding load loses nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

from gateway.decoder import DecoderProcess
from gateway.events import EventHub
from gateway.frames import Decoded, Frame
from gateway.metrics import Counters

log = logging.getLogger("meshelect.gateway")

# Frames taken in and not yet answered before new ones are dropped (counted "overload").
MAX_PENDING_FRAMES = 2000
# At most this many frames go to the worker as one group (one transaction): 64 full batches
# are 4096 readings, a commit of a few ms that holds no ack back for long.
MAX_GROUP = 64

# (mesh, leader, ack frame); called on the event loop's thread.
Reply = Callable[[str, str, bytes], None]
# What the worker returns for one frame: (mesh, leader, ack frame, live-feed events), or None
# for a frame dropped unanswered.
Outcome = tuple[str, str, bytes, list[dict[str, Any]]] | None
# The worker's job: frames (decoded=False) or decoded results (True) in, one outcome each out.
Handler = Callable[[list[Any], bool], list[Outcome]]


class FramePipeline:
    """Loop thread only, except the store loop, which runs on the worker."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        worker: concurrent.futures.Executor,
        handle: Handler,
        counters: Counters,
        hub: EventHub,
        clock: Callable[[], int],
    ) -> None:
        self._loop = loop
        self._worker = worker
        self._handle = handle
        self._counters = counters
        self._hub = hub
        self._clock = clock
        self.decoder: DecoderProcess | None = None
        self._inbox: list[tuple[Frame, Reply]] = []
        self._pending = 0
        self._dispatch_due = False
        # Shared with the worker, under the lock: what waits to be stored (decoded results, or
        # frames when there is no decoder), and whether the worker's store loop is running.
        self._lock = threading.Lock()
        self._ready: list[tuple[Any, Reply]] = []
        self._storing = False

    async def start_decoder(self, settings: tuple[dict[str, bytes], bool, str, int]) -> None:
        self.decoder = DecoderProcess(
            settings, self._decoded_group, self._lost_group, self._dispatch, self._counters
        )
        await self.decoder.start()

    async def stop(self) -> None:
        if self.decoder is not None:
            await self.decoder.stop()

    def on_frame(
        self, transport: str, data: bytes, reply: Reply, topic_mesh: str | None = None
    ) -> None:
        """A frame arrived. It is handed on once the loop is done with this wake-up, so the
        frames of one burst travel together."""
        if self._pending >= MAX_PENDING_FRAMES:
            self._counters.count_drop(transport, "overload")
            return
        self._pending += 1
        self._inbox.append(((transport, bytes(data), topic_mesh), reply))
        if not self._dispatch_due:
            self._dispatch_due = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_due = False
        decoder = self.decoder
        if decoder is None:
            inbox, self._inbox = self._inbox, []
            self._store(inbox)
        elif decoder.ready and self._inbox:
            now = self._clock()
            while self._inbox:
                group = self._inbox[:MAX_GROUP]
                del self._inbox[:MAX_GROUP]
                decoder.submit(now, [frame for frame, _ in group], group)
        # else: the decoder is starting again; the inbox waits for it (it calls this when up).

    def _decoded_group(self, results: list[Decoded], group: list[tuple[Frame, Reply]]) -> None:
        self._store([(result, reply) for result, (_, reply) in zip(results, group, strict=True)])

    def _lost_group(self, group: list[tuple[Frame, Reply]]) -> None:
        """The decoder died holding these frames: dropped, counted; their leaders resend."""
        self._pending -= len(group)
        for (transport, _, _), _ in group:
            self._counters.count_drop(transport, "decoder_lost")

    def _store(self, items: list[tuple[Any, Reply]]) -> None:
        """Queue items for the worker; start its store loop unless it runs already."""
        with self._lock:
            self._ready.extend(items)
            if self._storing or not self._ready:
                return
            self._storing = True
        self._worker.submit(self._store_loop)

    def _store_loop(self) -> None:
        """Worker: store what is queued, a group (one transaction) at a time, until nothing
        is left. Once a group is committed, its acks, live-feed events and count go to the
        loop, which sends the acks."""
        decoded = self.decoder is not None
        while True:
            with self._lock:
                group = self._ready[:MAX_GROUP]
                del self._ready[:MAX_GROUP]
                if not group:
                    self._storing = False
                    return
            events: list[dict[str, Any]] = []
            # No cyclic garbage collection while a group is handled: its thousands of
            # short-lived lists and dicts (the decoded batches) hold no cycles, yet a
            # collection would start every 700 of them and walk them all, a tenth of the
            # worker's time. Once they are freed the count of new objects is back down.
            collecting = gc.isenabled()
            gc.disable()
            try:
                outcomes = self._handle([item for item, _ in group], decoded)
            except Exception:  # a bug, not bad input: keep serving, but say so
                log.exception("frame handling failed")
                for _ in group:
                    self._counters.count_drop("any", "internal_error")
                outcomes = []
            finally:
                if collecting:
                    gc.enable()
            answers: list[tuple[Reply, str, str, bytes]] = []
            for (_, reply), outcome in zip(group, outcomes, strict=False):
                if outcome is None:
                    continue
                mesh, leader, ack, batch_events = outcome
                answers.append((reply, mesh, leader, ack))
                events.extend(batch_events)
            self._loop.call_soon_threadsafe(self._stored, len(group), answers, events)

    def _stored(
        self, count: int, answers: list[tuple[Reply, str, str, bytes]], events: list[dict[str, Any]]
    ) -> None:
        """Loop: a group is committed. Its acks go out from here, so that the worker goes on
        with the next group meanwhile: sending a datagram on loopback also delivers it and
        wakes its leader, tens of µs of kernel time per ack, now on the other core."""
        self._pending -= count
        for reply, mesh, leader, ack in answers:
            try:
                reply(mesh, leader, ack)
            except OSError as exc:
                log.warning("could not send BATCH_ACK to %s/%s: %s", mesh, leader, exc)
        self._hub.publish(events)
