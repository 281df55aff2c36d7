"""The readings journal: a member's unconfirmed readings, kept on disk across a kill -9.

The data path keeps readings in RAM until the gateway confirms them; a kill -9 or a power cut
would lose those. So each reading is also appended to `<state_dir>/journal-<boot>.jsonl` (one
JSON line: `[seq, t_ms, metrics]`, written straight to the OS, which keeps it when the process
is killed; there is no fsync per reading, so a power cut can still lose the last few seconds),
trimmed to the unconfirmed ones as confirmations arrive, and compacted when mostly stale. The
next boot resends what earlier journals still hold (`RecoveredReadings`); the gateway's dedup
makes a resend of an already stored reading harmless.

What can go wrong, and what happens then (never a crash):
- a torn or corrupt line (the kill hit mid-write, a bad sector, a stray edit): skipped and
  counted in `Recovery.bad_lines`; every other line still counts;
- a full disk: `add` and `trim` raise `OSError` (the runtime counts and logs it, RAM still
  holds the readings); a half-written line is cut off by a newline before the next one, and
  the next compaction rewrites the whole file from RAM, so nothing held is lost once space
  is back;
- a journal whose boot is not older than ours (the boot counter was reset, e.g. a deleted
  `boot` file): its (boot, seq) ids would clash with this boot's readings, so it is renamed
  `*.stale`, kept for a human and counted in `Recovery.stale`, never resent or appended to;
- more old readings than the buffer holds: the oldest are dropped and counted
  (`Recovery.dropped`), as a full buffer drops.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from agent.core import datapath

PREFIX = "journal-"
SUFFIX = ".jsonl"
COMPACT_SLACK = 256  # journal lines beyond twice the held readings before compacting
MAX_LINE_BYTES = 4096  # a reading line is ~100 bytes; anything longer is corrupt


def journal_name(boot: int) -> str:
    return "%s%d%s" % (PREFIX, boot, SUFFIX)


def _encode(seq: int, t_ms: int, metrics: dict[str, int]) -> bytes:
    return (json.dumps([seq, t_ms, metrics], separators=(",", ":")) + "\n").encode()


def parse_line(line: bytes) -> tuple[int, int, dict[str, int]] | None:
    """(seq, t_ms, metrics) of one journal line, or None if it is not a valid one."""
    try:
        item = json.loads(line)
    except (ValueError, RecursionError):  # torn, not JSON, not UTF-8, or absurdly nested
        return None
    if not (isinstance(item, list) and len(item) == 3):
        return None
    seq, t_ms, metrics = item
    if type(seq) is not int or type(t_ms) is not int or seq < 1 or not isinstance(metrics, dict):
        return None
    for name, value in metrics.items():
        if not isinstance(name, str) or type(value) is not int:
            return None
    return seq, t_ms, metrics


class Recovery:
    """What the journals of earlier boots still hold (see `ReadingJournal.recover`)."""

    def __init__(self) -> None:
        self.items: list[list[Any]] = []  # [[boot, seq, t_ms, metrics], ...] oldest first
        self.paths: list[str] = []  # the journals read: removed once all is confirmed
        self.dropped = 0  # older readings beyond the limit
        self.bad_lines = 0  # torn or corrupt lines skipped
        self.stale: list[str] = []  # journals of a boot not older than ours, set aside
        self.unreadable: list[str] = []  # journals that could not be read (kept on disk)


class ReadingJournal:
    """This boot's unconfirmed readings, mirrored in `<state_dir>/journal-<boot>.jsonl`.

    Bounded twice: `held` keeps at most `capacity` readings (the buffer's capacity; the oldest
    go first, as in the buffer) and the file at most `COMPACT_SLACK + 2 * len(held)` lines.
    """

    def __init__(self, state_dir: str, boot: int, capacity: int = 1 << 30) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, journal_name(boot))
        self.capacity = capacity
        self.held: dict[int, tuple[int, dict[str, int]]] = {}
        self.lines = 0
        self.write_errors = 0
        self._torn = False  # the last write may have left half a line
        # "w", not "a": a file of this boot here is from before a boot counter reset, and
        # `recover` has set it aside already. Unbuffered: one write() per line, straight to
        # the OS, so a kill -9 loses nothing that `add` returned from.
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 (open for the boot)

    def add(self, seq: int, t_ms: int, metrics: dict[str, int]) -> None:
        """Journal one reading; OSError (a full disk) after it is held in RAM regardless."""
        self.held[seq] = (t_ms, metrics)
        if len(self.held) > self.capacity:
            del self.held[min(self.held)]
        line = _encode(seq, t_ms, metrics)
        if self._torn:
            line = b"\n" + line  # end the half line a failed write left, so this one parses
        self.lines += 1
        try:
            written = self._file.write(line)
        except OSError:
            self._torn = True
            self.write_errors += 1
            raise
        self._torn = written != len(line)
        if self._torn:
            self.write_errors += 1
            raise OSError("journal %s: short write (disk full?)" % self.path)

    def trim(self, first_held: int | None) -> None:
        """Forget what the buffer no longer holds (confirmed, or dropped when full)."""
        for seq in [s for s in self.held if first_held is None or s < first_held]:
            del self.held[seq]
        if self.lines > COMPACT_SLACK + 2 * len(self.held):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with only what is held: a new file, then an atomic rename."""
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(_encode(seq, *self.held[seq]) for seq in sorted(self.held)))
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise  # the old file is untouched; the next trim tries again
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self.lines = len(self.held)
        self._torn = False

    def close(self) -> None:
        """Close; an empty journal (everything confirmed) is removed."""
        self._file.close()
        if not self.held:
            with contextlib.suppress(OSError):
                os.remove(self.path)

    @staticmethod
    def recover(state_dir: str, boot: int, limit: int) -> Recovery:
        """Readings that earlier boots journaled and may not have delivered, at most `limit`
        (the newest), oldest first. Never raises: problems are counted in the result."""
        result = Recovery()
        found: list[list[Any]] = []
        try:
            names = sorted(os.listdir(state_dir))
        except OSError:
            return result
        journals = []
        for name in names:
            if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
                continue
            try:
                old_boot = int(name[len(PREFIX) : -len(SUFFIX)])
            except ValueError:
                continue
            journals.append((old_boot, os.path.join(state_dir, name)))
        for old_boot, path in sorted(journals):
            if old_boot >= boot:
                try:
                    os.replace(path, path + ".stale")
                    result.stale.append(path + ".stale")
                except OSError:
                    result.unreadable.append(path)
                continue
            seen: dict[int, list[Any]] = {}
            try:
                result.bad_lines += _read_journal(path, old_boot, seen)
            except OSError:
                result.unreadable.append(path)
                continue
            result.paths.append(path)
            found.extend(seen[seq] for seq in sorted(seen))
        result.items = found[-limit:] if limit > 0 else []
        result.dropped = len(found) - len(result.items)
        return result


def _read_journal(path: str, boot: int, seen: dict[int, list[Any]]) -> int:
    """Add the readings of one journal file to `seen` (by seq: a later line wins); returns
    how many lines were torn or corrupt."""
    bad = 0
    with open(path, "rb") as f:
        while True:
            line = f.readline(MAX_LINE_BYTES)
            if not line:
                return bad
            if not line.endswith(b"\n") and len(line) >= MAX_LINE_BYTES:
                while line and not line.endswith(b"\n"):  # skip the rest of an overlong line
                    line = f.readline(MAX_LINE_BYTES)
                bad += 1
                continue
            if not line.strip():
                continue
            parsed = parse_line(line)
            if parsed is None:
                bad += 1
                continue
            seq, t_ms, metrics = parsed
            seen[seq] = [boot, seq, t_ms, metrics]


class RecoveredReadings:
    """Readings of earlier boots (from their journals), resent until confirmed.

    READINGS carry each reading's own boot, so these travel like any other; confirmations
    come back as ranges of that old boot, which the current buffer ignores and we take here.
    Once all are confirmed, the old journals are removed.
    """

    def __init__(self, items: list[list[Any]], paths: list[str]) -> None:
        self.items = {(item[0], item[1]): item for item in items}
        self.paths = paths
        self.sent_at: dict[tuple[int, int], int] = {}
        self.target: tuple[str | None, int] = (None, -1)
        self.confirmed = 0
        if not self.items:
            self._remove_journals()  # nothing (valid) left in them

    def due(self, now: int, leader: str, term: int) -> list[list[Any]]:
        if (leader, term) != self.target:
            self.target = (leader, term)
            self.sent_at.clear()
        out = []
        for key in sorted(self.items):
            if now - self.sent_at.get(key, -datapath.RESEND_MS) >= datapath.RESEND_MS:
                self.sent_at[key] = now
                out.append(self.items[key])
                if len(out) >= datapath.MAX_READINGS_PER_FRAME:
                    break
        return out

    def confirm(self, ranges: Any) -> None:
        if not isinstance(ranges, list):
            return
        for item in ranges:
            if isinstance(item, list) and len(item) == 3 and all(type(v) is int for v in item):
                boot, first, last = item
                for key in [k for k in self.items if k[0] == boot and first <= k[1] <= last]:
                    del self.items[key]
                    self.sent_at.pop(key, None)
                    self.confirmed += 1
        if not self.items:
            self._remove_journals()

    def _remove_journals(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                os.remove(path)
        self.paths = []
