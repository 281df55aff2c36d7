"""The readings journal (agent/journal.py): what a kill -9, a torn line, a journal of an old
boot or a full disk do to it. Plain files in a temp dir; a full disk is a real one (a tiny
tmpfs, as root) or /dev/full."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal import (
    COMPACT_SLACK,
    MAX_LINE_BYTES,
    ReadingJournal,
    RecoveredReadings,
    journal_name,
    parse_line,
)


def _line(seq: int, t_ms: int = 1000, metrics: dict[str, int] | None = None) -> str:
    return json.dumps([seq, t_ms, metrics if metrics is not None else {"t": seq}]) + "\n"


def test_keeps_unconfirmed_readings_for_the_next_boot(tmp_path: Path) -> None:
    journal = ReadingJournal(str(tmp_path), boot=3)
    for seq in range(1, 6):
        journal.add(seq, 1000 + seq, {"t": seq})
    journal.trim(first_held=4)  # 1..3 confirmed
    # A kill -9 here: nothing closes the journal. The next boot finds 4 and 5 (the journal
    # may still list 1..3 until it compacts; the gateway's dedup absorbs such resends).
    found = ReadingJournal.recover(str(tmp_path), boot=4, limit=100)
    assert (found.dropped, found.bad_lines, found.stale) == (0, 0, [])
    assert [item[:2] for item in found.items if item[1] >= 4] == [[3, 4], [3, 5]]
    assert found.items[-1] == [3, 5, 1005, {"t": 5}]
    recovered = RecoveredReadings(found.items, found.paths)
    first = recovered.due(0, "leader", 1)
    assert {tuple(item[:2]) for item in first} == {(3, s) for s in range(1, 6)}
    assert recovered.due(10, "leader", 1) == []  # not due again before RESEND_MS
    assert recovered.due(10, "other", 2)  # a new leader gets everything at once
    recovered.confirm([[3, 1, 5], [9, 1, 1], "junk", [1, 2]])
    assert not recovered.items and recovered.confirmed == 5
    assert not Path(found.paths[0]).exists()  # delivered: the old journal is gone


def test_compacts_and_removes_itself_when_empty(tmp_path: Path) -> None:
    journal = ReadingJournal(str(tmp_path), boot=1)
    for seq in range(1, 600):
        journal.add(seq, seq, {"t": seq})
        journal.trim(first_held=seq)  # everything but the newest confirmed
    assert journal.lines <= COMPACT_SLACK + 2
    assert len(Path(journal.path).read_text().splitlines()) == journal.lines
    assert not list(tmp_path.glob("*.tmp"))
    journal.trim(first_held=None)
    journal.close()
    assert not Path(journal.path).exists()


def test_holds_at_most_its_capacity_oldest_out_first(tmp_path: Path) -> None:
    journal = ReadingJournal(str(tmp_path), boot=1, capacity=10)
    for seq in range(1, 1000):
        journal.add(seq, seq, {"t": seq})
        journal.trim(first_held=1)  # nothing confirmed: only the capacity bounds it
    assert sorted(journal.held) == list(range(990, 1000))
    assert journal.lines <= COMPACT_SLACK + 2 * 10
    # The file may still list older ones until it compacts; the newest `limit` come back.
    found = ReadingJournal.recover(str(tmp_path), boot=2, limit=10)
    assert [item[1] for item in found.items] == list(range(990, 1000))


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    full = _line(1) + _line(2) + _line(3)
    (tmp_path / journal_name(1)).write_text(full[: len(full) - 7])  # killed mid-write
    found = ReadingJournal.recover(str(tmp_path), boot=2, limit=100)
    assert [item[1] for item in found.items] == [1, 2]
    assert found.bad_lines == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"5\n",  # valid JSON, not a reading
        b'"abc"\n',  # unpacks into three strings
        b'{"a":1,"b":2,"c":3}\n',
        b"[1,2]\n",
        b'[0,1,{"t":1}]\n',  # seq starts at 1
        b'[true,1,{"t":1}]\n',  # a bool is not a seq
        b'[4,1,{"t":"warm"}]\n',  # metrics are ints
        b'[4,1,{"t":1.5}]\n',
        b"\xff\xfe\x00garbage\n",  # not UTF-8
        b"[" * 3000 + b"\n",  # nested past the recursion limit
        b"[" * (MAX_LINE_BYTES * 3) + b"\n",  # overlong line
        b"\x00" * 100 + b"\n",  # a block of zeros after a power cut
    ],
)
def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path, garbage: bytes) -> None:
    data = _line(1).encode() + garbage + _line(2).encode()
    (tmp_path / journal_name(1)).write_bytes(data)
    found = ReadingJournal.recover(str(tmp_path), boot=2, limit=100)
    assert [item[1] for item in found.items] == [1, 2]
    assert found.bad_lines == 1


def test_parse_line_takes_only_readings() -> None:
    assert parse_line(b'[7,123,{"t":1,"h":2}]\n') == (7, 123, {"t": 1, "h": 2})
    assert parse_line(b"[7,123,{}]") == (7, 123, {})
    assert parse_line(b"") is None
    assert parse_line(b"[7,123]") is None


def test_journals_of_old_boots_are_read_oldest_first_and_limited(tmp_path: Path) -> None:
    (tmp_path / journal_name(2)).write_text(_line(1) + _line(2))
    (tmp_path / journal_name(10)).write_text(_line(1) + _line(2) + _line(1, t_ms=5))
    (tmp_path / "journal-x.jsonl").write_text(_line(1))  # not ours: ignored
    (tmp_path / "notes.txt").write_text("hello")
    found = ReadingJournal.recover(str(tmp_path), boot=11, limit=3)
    # Numeric order (2 before 10), seq order within a boot; a repeated seq: the later line.
    assert [item[:3] for item in found.items] == [[2, 2, 1000], [10, 1, 5], [10, 2, 1000]]
    assert found.dropped == 1  # the oldest, as a full buffer drops
    assert sorted(found.paths) == sorted(str(tmp_path / journal_name(b)) for b in (2, 10))
    assert (tmp_path / "journal-x.jsonl").exists()


def test_journal_of_this_or_a_later_boot_is_set_aside(tmp_path: Path) -> None:
    # The boot counter went back (its file was deleted): journal-3 and journal-5 hold ids
    # (boot, seq) that this boot 3 and a later boot 5 will use again.
    (tmp_path / journal_name(3)).write_text(_line(1))
    (tmp_path / journal_name(5)).write_text(_line(1))
    found = ReadingJournal.recover(str(tmp_path), boot=3, limit=100)
    assert found.items == [] and found.paths == []
    assert sorted(found.stale) == sorted(
        str(tmp_path / (journal_name(b) + ".stale")) for b in (3, 5)
    )
    journal = ReadingJournal(str(tmp_path), boot=3)
    journal.add(1, 1, {"t": 1})
    assert Path(journal.path).read_text() == '[1,1,{"t":1}]\n'  # fresh, not appended
    assert (tmp_path / (journal_name(3) + ".stale")).read_text() == _line(1)


def test_missing_or_unreadable_state_dir_recovers_nothing(tmp_path: Path) -> None:
    found = ReadingJournal.recover(str(tmp_path / "absent"), boot=2, limit=100)
    assert (found.items, found.paths, found.dropped) == ([], [], 0)
    os.mkdir(tmp_path / journal_name(1))  # a directory where a journal should be
    found = ReadingJournal.recover(str(tmp_path), boot=2, limit=100)
    assert found.items == [] and found.unreadable == [str(tmp_path / journal_name(1))]


DISK_FULL = "No space left on device|short write"


def _fill(path: Path) -> None:
    """Write until the disk is full (bounded by the tiny disk's size)."""
    with open(path, "wb", buffering=0) as f:
        for _ in range(1024):
            try:
                f.write(b"x" * 1024)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    raise AssertionError("the disk did not fill up")


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A real 64 KiB tmpfs (needs root), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = Path(tempfile.mkdtemp(prefix="ma-journal-"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        folder.rmdir()
        pytest.skip("cannot mount a tmpfs here: %s" % exc)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        folder.rmdir()


def test_full_disk_raises_oserror_and_recovers_once_space_is_back(tiny_disk: Path) -> None:
    journal = ReadingJournal(str(tiny_disk), boot=1)
    filler = tiny_disk / "filler"
    _fill(filler)
    errors = 0
    for seq in range(1, 200):
        try:
            journal.add(seq, seq, {"temperature": 20000 + seq})
        except OSError:
            errors += 1
    assert errors > 0 and journal.write_errors == errors
    assert len(journal.held) == 199  # RAM still holds every reading
    filler.unlink()  # space is back
    journal.add(200, 200, {"temperature": 1})
    journal.trim(first_held=150)
    journal._compact()  # what the next trim past the slack does
    found = ReadingJournal.recover(str(tiny_disk), boot=2, limit=1000)
    assert [item[1] for item in found.items] == list(range(150, 201))
    assert found.bad_lines == 0
    journal.close()


def test_compaction_on_a_full_disk_keeps_the_old_file(tiny_disk: Path) -> None:
    journal = ReadingJournal(str(tiny_disk), boot=1)
    for seq in range(1, 11):
        journal.add(seq, seq, {"t": seq})
    before = Path(journal.path).read_bytes()
    _fill(tiny_disk / "filler")
    with pytest.raises(OSError, match=DISK_FULL):
        journal._compact()
    assert Path(journal.path).read_bytes() == before
    assert not list(tiny_disk.glob("*.tmp"))
    journal.close()


def test_write_error_on_dev_full_is_an_oserror(tmp_path: Path) -> None:
    # /dev/full fails every write with ENOSPC: works without root.
    journal = ReadingJournal(str(tmp_path), boot=1)
    journal._file.close()
    journal._file = open("/dev/full", "wb", buffering=0)  # noqa: SIM115
    with pytest.raises(OSError, match=DISK_FULL):
        journal.add(1, 1, {"t": 1})
    assert journal.held == {1: (1, {"t": 1})}
    journal.close()


def test_journals_with_nothing_valid_left_are_removed(tmp_path: Path) -> None:
    (tmp_path / journal_name(1)).write_text("[1,2\n")  # only a torn line
    found = ReadingJournal.recover(str(tmp_path), boot=2, limit=100)
    assert found.items == [] and found.bad_lines == 1
    RecoveredReadings(found.items, found.paths)
    assert not (tmp_path / journal_name(1)).exists()  # not read again at every boot
