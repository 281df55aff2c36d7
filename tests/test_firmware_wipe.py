"""A flashed board (its files wiped) comes back with a boot id above its old ones, and every
new reading is stored: the firmware on the MicroPython unix port (the built .mpy) beside a Pi
agent, with the real gateway, one per network namespace (issue 9, item 2). The Pi agent's half
is in tests/test_field_identity.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from testkit.netns import Lab
from tests.test_firmware_mixed import GW_HOST, MixedMesh, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.micropython, pytest.mark.slow]

FW = 4  # fw-4 leads (battery 990); Pi n1 follows


def seqs(db: Path, node: str, boot: int) -> set[int]:
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT seq FROM readings WHERE node = ? AND boot = ?", (node, boot)
        ).fetchall()
    finally:
        conn.close()
    return {row[0] for row in rows}


def confirmed(mesh: MixedMesh, boot: int, at_least: int) -> int:
    def enough() -> int | None:
        status = mesh.status(FW)
        if not status or status["boot"] != boot:
            return None
        buf = status["buffer"]
        first = buf["unconfirmed_from"]
        done = buf["taken"] if first is None else first - 1
        return done if done >= at_least else None

    done = wait_for(enough)
    assert done, mesh.logs()
    return int(done)


def test_a_flashed_board_comes_back_above_its_old_boots_and_loses_nothing(
    tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    lab = Lab(prefix="fw-w-", subnet="10.96.4.0/24", hosts=GW_HOST).open()
    mesh = MixedMesh(lab, tmp_path, mpy_exe, frozen=mpy_bits == 32)
    try:
        mesh.start_gateway()
        mesh.start_fw(FW)
        mesh.start_pi(1)
        assert wait_for(lambda: mesh.agreed([1, FW]) == "fw-4"), mesh.logs()
        old_boot = mesh.status(FW)["boot"]  # type: ignore[index]
        confirmed(mesh, old_boot, 10)
        mesh.kill(FW)
        old = seqs(mesh.db, "fw-4", old_boot)
        folder = tmp_path / ("fw%d" % FW)
        for name in ("boot_count", "status.json"):  # flashed: the board's files are gone
            (folder / name).unlink()
        folder.rename(tmp_path / "fw-before")
        mesh.start_fw(FW)  # a fresh folder: the same build, config and host
        new_boot = wait_for(lambda: (mesh.status(FW) or {}).get("boot"))
        assert new_boot and new_boot > old_boot, mesh.logs()
        done = confirmed(mesh, new_boot, 15)
        new = seqs(mesh.db, "fw-4", new_boot)
        lost = set(range(1, done + 1)) - new
        print(
            "flashed board: boot %d -> %d; first life %d stored, second life %d confirmed, "
            "%d stored, %d lost" % (old_boot, new_boot, len(old), done, len(new), len(lost))
        )
        assert not lost
        assert seqs(mesh.db, "fw-4", old_boot) == old
    finally:
        for proc in mesh.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        mesh.close()
        lab.close()
