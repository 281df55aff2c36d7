"""Faults on purpose: an agent that ignores the frames of some peers, as if the network lost them.

`meshelect demo` partitions its mesh with this (several agents on one loopback interface share
one multicast group, so there is no link to cut), and a lab can do the same on any transport.
The agent's config names a JSON file (`[faults] file`); whoever wants the fault writes it:

    {"drop_from": ["node-3", "node-4"]}

Every frame whose sender is listed is dropped before the agent decodes it: election frames,
readings and acks alike, as a cut link would. The file is re-read when it changes (looked at
no more than every `RECHECK_S`); a missing or empty file means no fault. The agent logs each
change of the list, so its log says when it was cut off and when it was healed.

The sender is read from the frame's CBOR header by hand (array head, version/kind, mesh hash,
sender), without decoding or authenticating the frame: this is fault injection, not a filter
against anyone. A forged sender only gets a frame dropped, which anyone on the link can do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from agent.transport.base import FrameHandler

RECHECK_S = 0.2  # how stale the drop list may be: well below one heartbeat (250 ms)
_MAX_FILE_BYTES = 65536


def peek_sender(frame: bytes) -> str | None:
    """The sender id in a frame's header (``[vk, mesh_hash, sender, ...]``), or None."""
    try:
        major, count, pos = _head(frame, 0)
        if major != 4 or count < 3:
            return None
        for _ in range(2):  # vk, mesh_hash: unsigned ints
            major, _value, pos = _head(frame, pos)
            if major != 0:
                return None
        major, length, pos = _head(frame, pos)
        if major != 3 or pos + length > len(frame):
            return None
        return frame[pos : pos + length].decode("utf-8")
    except (IndexError, UnicodeDecodeError):
        return None


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, next position) of the CBOR item head at ``pos``."""
    first = data[pos]
    major, info = first >> 5, first & 31
    if info < 24:
        return major, info, pos + 1
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or pos + 1 + size > len(data):
        raise IndexError("not a definite head")
    return major, int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


class FaultFilter:
    """Wraps a transport's frame handler; drops what the faults file says to drop."""

    def __init__(
        self,
        path: str,
        on_frame: FrameHandler,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.on_frame = on_frame
        self.log = log
        self.clock = clock
        self.drop_from: frozenset[str] = frozenset()
        self.dropped = 0
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0

    def __call__(self, data: bytes, source: Any) -> None:
        self.poll()
        if self.drop_from and peek_sender(data) in self.drop_from:
            self.dropped += 1
            return
        self.on_frame(data, source)

    def poll(self) -> None:
        """Re-read the file if it changed and the last look is older than RECHECK_S."""
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + RECHECK_S
        try:
            info = os.stat(self.path)
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._set(self._read() if stamp is not None else frozenset())

    def _read(self) -> frozenset[str]:
        try:
            with open(self.path, "rb") as f:
                text = f.read(_MAX_FILE_BYTES)
            data = json.loads(text) if text.strip() else {}
        except (OSError, ValueError) as exc:
            self.log.warning("faults_file_unreadable", path=self.path, error=str(exc))
            return self.drop_from  # keep what was in force; the next change is read again
        listed = data.get("drop_from", []) if isinstance(data, dict) else None
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            self.log.warning("faults_file_unreadable", path=self.path, error="bad drop_from")
            return self.drop_from
        return frozenset(listed)

    def _set(self, drop_from: frozenset[str]) -> None:
        if drop_from == self.drop_from:
            return
        self.drop_from = drop_from
        if drop_from:
            self.log.warning("faults_on", drop_from=",".join(sorted(drop_from)))
        else:
            self.log.info("faults_off", dropped=self.dropped)
