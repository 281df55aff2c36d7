"""What one gateway replica tells the others through PostgreSQL's LISTEN/NOTIFY.

Replicas share one database (gateway/pgstorage.py) but each has its own live view (tracker,
dashboard, SSE feed). Every fact a replica writes that the others must show is announced by a
NOTIFY on :data:`CHANNEL`, sent in the same transaction as the write: PostgreSQL delivers it
when (and only if) that transaction commits, in commit order, to every listening session.

Payloads are small JSON objects (PostgreSQL allows 8000 bytes); ``k`` says what happened:

- ``b``: a batch was stored or fenced: ``m`` mesh, ``l`` leader, ``t`` term, ``s`` BATCH_ACK
  status, ``i`` readings inserted, ``d`` duplicates, ``at`` the time it was received. The
  readings, members and aggregates themselves are read back from the database.
- ``e``: an election was recorded: ``m``, ``t``, ``l``, ``r`` reason, ``at``.
- ``a``: an alert was raised, ``c``: cleared: ``id``, ``m``, ``kind``, ``n`` node, ``msg``,
  ``at`` when it was raised, ``cl`` when it was cleared (null while open).

:class:`Listener` holds one connection of its own (LISTEN) on the event loop and hands each
notification to a callback, leaving out the ones this process sent itself (by the sending
backend's pid). It reconnects after a failure, and calls ``on_connect`` after every LISTEN,
so that the caller reads again what it may have missed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from gateway.metrics import Counters

log = logging.getLogger("meshelect.gateway.pgnotify")

CHANNEL = "meshelect"
# Seconds between attempts to get the listening connection back.
RETRY_S = 1.0

_to_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def batch_note(
    mesh: str, leader: str, term: int, status: int, inserted: int, duplicates: int, at_ms: int
) -> str:
    return _to_json(
        {"k": "b", "m": mesh, "l": leader, "t": term, "s": status, "i": inserted,
         "d": duplicates, "at": at_ms}
    )  # fmt: skip


def election_note(mesh: str, term: int, leader: str, reason: str, at_ms: int) -> str:
    return _to_json({"k": "e", "m": mesh, "t": term, "l": leader, "r": reason, "at": at_ms})


# The alert notes are built by the statement that writes the row (it knows the id): SQL that
# makes the payload from the row (``alerts`` columns) for kind "a" (raised) and "c" (cleared).
ALERT_NOTE_SQL = (
    "json_build_object('k', %s::text, 'id', id, 'm', mesh, 'kind', kind, 'n', node, "
    "'msg', message, 'at', raised_ms, 'cl', cleared_ms)::text"
)


_ALERT_FIELDS = {"id": int, "m": str, "kind": str, "n": str, "msg": str, "at": int}
# The fields of each kind of note, and their types.
_FIELDS: dict[str, dict[str, type]] = {
    "b": {"m": str, "l": str, "t": int, "s": int, "i": int, "d": int, "at": int},
    "e": {"m": str, "t": int, "l": str, "r": str, "at": int},
    "a": _ALERT_FIELDS,
    "c": dict(_ALERT_FIELDS, cl=int),
}


def decode(payload: str) -> dict[str, Any] | None:
    """A note as a replica sends it; None for anything else on the channel (dropped)."""
    try:
        note = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(note, dict):
        return None
    fields = _FIELDS.get(str(note.get("k")))
    if fields is None:
        return None
    for name, kind in fields.items():
        value = note.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return None
    return dict(note)


class Listener:
    """LISTEN on :data:`CHANNEL` (loop thread); ``on_note`` gets each note another process
    sent, ``on_connect`` is called after each (re)connection."""

    def __init__(
        self,
        url: str,
        own_pid: Callable[[], int],
        on_note: Callable[[dict[str, Any]], None],
        on_connect: Callable[[], None],
        counters: Counters,
    ) -> None:
        self.url = url
        self._own_pid = own_pid
        self._on_note = on_note
        self._on_connect = on_connect
        self._counters = counters
        self.connected = False

    async def run(self) -> None:
        """Listen until cancelled (the gateway runs it as one of its tasks)."""
        import psycopg

        failed = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute("LISTEN " + CHANNEL)
                    self.connected = True
                    if failed:
                        log.warning("listening to the other replicas again")
                    failed = False
                    self._on_connect()
                    async for notify in conn.notifies():
                        if notify.pid == self._own_pid():
                            continue  # this process's own writes: already in its live view
                        note = decode(notify.payload)
                        if note is None:  # not a replica's note: dropped, counted
                            self._counters.count_drop("replicas", "bad_note")
                        else:
                            self._on_note(note)
            except psycopg.Error as exc:
                self.connected = False
                if not failed:
                    log.warning("lost the other replicas' notifications (%s); retrying", exc)
                failed = True
            await asyncio.sleep(RETRY_S)
