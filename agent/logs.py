"""Structured event log for the Pi agent: one line per event, text or JSON.

Every event is also counted, so `meshelect status` can show how often each bad-input case
happened without anyone grepping logs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

LEVELS = ("debug", "info", "warning", "error")


def _timestamp(wall: float) -> str:
    ms = int(wall * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{ms:03d}Z"


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' ="'):
        return json.dumps(text)
    return text


class EventLog:
    """Writes one line per event to a stream and counts events by name."""

    def __init__(
        self,
        node: str,
        log_format: str = "text",
        stream: IO[str] | None = None,
        min_level: str = "info",
    ) -> None:
        self.node = node
        self.json = log_format == "json"
        self.stream = stream if stream is not None else sys.stderr
        self.min_rank = LEVELS.index(min_level) if min_level in LEVELS else 1
        self.counts: dict[str, int] = {}

    def event(self, name: str, level: str = "info", /, **fields: Any) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        rank = LEVELS.index(level) if level in LEVELS else 1
        if rank < self.min_rank:
            return
        wall = time.time()
        if self.json:
            record: dict[str, Any] = {
                "ts": _timestamp(wall),
                "node": self.node,
                "level": level,
                "event": name,
            }
            for key in sorted(fields):
                record[key] = fields[key]
            line = json.dumps(record, default=str, separators=(",", ":"))
        else:
            parts = [_timestamp(wall), self.node, level, name]
            parts.extend(f"{key}={_text_value(fields[key])}" for key in sorted(fields))
            line = " ".join(parts)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            # A closed stderr (daemon whose terminal went away) must not stop the agent.
            pass

    def debug(self, name: str, /, **fields: Any) -> None:
        self.event(name, "debug", **fields)

    def info(self, name: str, /, **fields: Any) -> None:
        self.event(name, "info", **fields)

    def warning(self, name: str, /, **fields: Any) -> None:
        self.event(name, "warning", **fields)

    def error(self, name: str, /, **fields: Any) -> None:
        self.event(name, "error", **fields)
