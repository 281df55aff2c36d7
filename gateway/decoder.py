"""The frame decoder in a process of its own, so that decoding runs beside the storage.

Checking a BATCH frame (HMAC tag, CBOR, the batch schema) and making its readings' stored
metrics text is most of the gateway's CPU time per batch after SQLite. In one process both
share one interpreter lock; here the decoder takes the second core while the ingest worker
writes to the database.

The child (``python -m gateway.decoder``) owns a :class:`gateway.frames.FrameRouter` and so the
codecs' replay windows; the parent keeps its own router only to encode the BATCH_ACKs. They
talk over the child's stdin and stdout: length-prefixed pickles, a group of frames in and one
result per frame out, in order. The first message is the router's settings (the mesh keys go
through the pipe, never the command line).

The child acknowledges nothing and stores nothing: if it dies, the frames it held are dropped
(counted, ``decoder_lost``), their leaders send them again, and :class:`DecoderProcess` starts
a new child. The new child's replay windows start empty, as after a gateway restart: a frame
replayed then is fenced or deduplicated by the storage, never stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

from gateway.frames import Decoded, Frame, FrameRouter
from gateway.metrics import Counters

log = logging.getLogger("meshelect.gateway")

_HEADER = struct.Struct(">I")
# A child that dies sooner than this after its start is started again only after this pause,
# so a decoder that cannot run does not spin.
_RESTART_PAUSE_S = 1.0


def _message(value: Any) -> bytes:
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # the parent closed the pipe: stop
    (size,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def main() -> None:
    """The child: decode groups of frames until stdin ends."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    settings = _read(stdin)
    if settings is None:
        return
    keys, open_meshes, node_id, boot = settings
    router = FrameRouter(keys, open_meshes, node_id, boot)
    while True:
        group = _read(stdin)
        if group is None:
            return
        now_ms, frames = group
        results: list[Decoded]
        try:
            results = router.decode_many(frames, now_ms)
        except Exception:  # a bug, not bad input: say so, drop the group, keep serving
            traceback.print_exc()
            results = [(frame[0], "internal_error") for frame in frames]
        stdout.write(_message(results))
        stdout.flush()


class DecoderProcess:
    """The parent's side: starts the child, sends it groups, hands back results in order.

    Loop thread only. ``on_result(results, token)`` gets each group's results with the token
    it was submitted with; ``on_lost(token)`` each group the child died holding; ``on_ready()``
    is called when a child has started (again), to send it what waited.
    """

    def __init__(
        self,
        settings: tuple[dict[str, bytes], bool, str, int],
        on_result: Callable[[list[Decoded], Any], None],
        on_lost: Callable[[Any], None],
        on_ready: Callable[[], None],
        counters: Counters,
    ) -> None:
        self._settings = settings
        self._counters = counters
        self._on_result = on_result
        self._on_lost = on_lost
        self._on_ready = on_ready
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._outstanding: deque[Any] = deque()
        self._stopping = False
        self._started_at = 0.0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def ready(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        self._started_at = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.decoder",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(_message(self._settings))
        self._process = process
        self._reader = asyncio.create_task(self._read_results(process), name="gateway-decoder")
        self._on_ready()

    def submit(self, now_ms: int, frames: list[Frame], token: Any) -> None:
        """Send one group to the child (call only when ``ready``)."""
        assert self._process is not None and self._process.stdin is not None
        self._outstanding.append(token)
        self._process.stdin.write(_message((now_ms, frames)))

    async def _read_results(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                header = await process.stdout.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                results = pickle.loads(await process.stdout.readexactly(size))
                self._on_result(results, self._outstanding.popleft())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child is gone
        await self._ended(process)

    async def _ended(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self._process = None
        while self._outstanding:
            self._on_lost(self._outstanding.popleft())
        if self._stopping:
            return
        self._counters.decoder_restarts += 1
        log.error("frame decoder process %d ended (code %s); starting a new one", process.pid, code)
        if time.monotonic() - self._started_at < _RESTART_PAUSE_S:
            await asyncio.sleep(_RESTART_PAUSE_S)
        if not self._stopping:
            await self.start()

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is not None and process.stdin is not None:
            process.stdin.close()  # the child ends at the end of its input
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
        if self._reader is not None:
            await self._reader


if __name__ == "__main__":
    main()
