"""The gateway's disk fills up while a real mesh sends to it.

Four real agents (one network namespace each, UDP, a reading every 300 ms) and the real
gateway process, whose SQLite database lives on a small tmpfs this test mounts and fills. While
the disk is full: nothing unstored is acknowledged, ``/healthz`` says degraded and why, the
timers keep working (a killed agent gives its ``node_silent`` alert), and SIGTERM exits 0.
After space returns: ``/healthz`` is ok again, the write-ahead log gives its space back, and
every reading taken is stored exactly once (the killed agent's too, from its journal when it
comes back). The figures (time to store everything held, readings taken/stored/lost/duplicate)
are printed, not asserted on time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testkit.gateway import GatewayProcess
from testkit.meshlab import GATEWAY_PORT, MeshUnderTest, delivery_report

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WAIT_S = 60.0  # bounds on waiting for an outcome; nothing asserts on how long it took
TMPFS_SIZE = "24m"
FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    "except Exception as exc:\n"
    "    print('null'); print(exc, file=sys.stderr)\n"
)


@contextlib.contextmanager
def tmpfs(path: str, size: str) -> Iterator[str]:
    """A tmpfs of ``size`` mounted at ``path`` (root), unmounted afterwards whatever happens."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], check=False).returncode != 0:
            subprocess.run(["umount", "-l", path], check=False)  # still busy: detach it


def fill(folder: str, leave: int = 0) -> str:
    """Write a filler file until the file system has no byte left, then give ``leave`` bytes
    back (for the gateway to fill); its path."""
    filler = os.path.join(folder, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


class FullDiskMesh(MeshUnderTest):
    """The test kit's mesh, its gateway started with the options this test needs (a database
    on the tmpfs, a shorter silence alert)."""

    gateway: GatewayProcess

    def __init__(self, db: str, **kwargs: Any) -> None:
        super().__init__(4, "udp", **kwargs)
        self.gateway_db = db

    def open(self) -> FullDiskMesh:
        self.lab.open()
        try:
            self.gateway = GatewayProcess(
                self.gateway_db,
                "--silent-after", "6s",
                udp_port=GATEWAY_PORT,
                host=self.lab.address(self.gw_host),
                wrap=self.lab.command(self.gw_host, []),
            ).start()  # fmt: skip
        except BaseException:
            self.close()
            raise
        return self

    def get(self, path: str) -> Any:
        """GET the gateway's API from inside its namespace (JSON, or None if it failed)."""
        result = self.lab.exec(
            self.gw_host, [sys.executable, "-c", FETCH, self.gateway.url + path], timeout=20
        )
        text = result.stdout.strip()
        if not text or text == "null":
            return None
        return text if path == "/metrics" else json.loads(text)

    def health(self) -> Any:
        return self.get("/healthz")

    def metric(self, name: str) -> float:
        """The sum of ``name``'s samples (all labels)."""
        counters = self.gateway_counters()
        return sum(v for k, v in counters.items() if k == name or k.startswith(name + "{"))

    def live_alerts(self) -> list[tuple[str, str]]:
        state = self.get("/api/meshes/" + self.mesh) or {}
        return [(a["kind"], a["node"]) for a in state.get("alerts", [])]

    def stored_count(self) -> int:
        return sum(len(seqs) for seqs in self.stored().values())

    def all_stored(self, taken: dict[tuple[str, int], int]) -> bool:
        """Every reading in ``taken`` ((node, boot) -> readings taken) is stored."""
        stored = self.stored()
        return all(
            seq in stored.get(key, ())
            for key, count in taken.items()
            for seq in range(1, count + 1)
        )

    def taken(self) -> dict[tuple[str, int], int]:
        return {
            (self.node_id(host), status["boot"]): status["buffer"]["taken"]
            for host, status in self.statuses().items()
        }


def duplicates_in_db(db: str) -> int:
    import sqlite3

    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        distinct = conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT mesh, node, boot, seq FROM readings)"
        ).fetchone()[0]
    finally:
        conn.close()
    return int(rows - distinct)


def wait_degraded(mesh: FullDiskMesh) -> dict[str, Any]:
    health = mesh.wait_for(
        lambda: (h := mesh.health()) is not None and h["status"] == "degraded" and h, WAIT_S, 0.3
    )
    assert health, mesh.health()
    return dict(health)


def test_a_full_disk_loses_nothing_and_stops_nothing(tmp_path: Any) -> None:
    folder = str(tmp_path / "disk")
    with tmpfs(folder, TMPFS_SIZE):
        mesh = FullDiskMesh(os.path.join(folder, "gateway.db"), mesh="t-full", prefix="mfd-",
                            subnet="10.95.0.0/24", sample_ms=300)  # fmt: skip
        killed: dict[tuple[str, int], tuple[int, int]] = {}
        try:
            with mesh:
                for host, battery in ((1, 950), (2, 800), (3, 700), (4, 600)):
                    mesh.start_agent(host, battery)
                assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S)
                assert mesh.wait_for(lambda: mesh.stored_count() >= 80, WAIT_S)
                assert mesh.health()["status"] == "ok"

                # -- 1. The disk fills up (the gateway's write-ahead log takes the last bytes);
                # the gateway keeps working, degraded.
                wal_before = os.path.getsize(mesh.gateway_db + "-wal")
                filler = fill(folder, leave=256 * 1024)
                health = wait_degraded(mesh)
                (problem,) = [p for p in health["problems"] if p["what"] == "storage"]
                assert "full" in problem["error"], health
                wal_full = os.path.getsize(mesh.gateway_db + "-wal")
                assert wal_full > wal_before
                # The timer still raises alerts: kill a member, its silence is noticed.
                status = mesh.statuses()[4]
                killed[("n4", status["boot"])] = (status["buffer"]["taken"], 0)
                mesh.kill(4)
                assert mesh.wait_for(lambda: ("node_silent", "n4") in mesh.live_alerts(), WAIT_S)
                assert mesh.health()["status"] == "degraded"  # raised while the disk was full
                taken_while_full = mesh.taken()

                # -- 2. Space returns: everything held is stored, exactly once.
                os.unlink(filler)
                freed = time.monotonic()
                assert mesh.wait_for(lambda: mesh.all_stored(taken_while_full), WAIT_S, 0.2)
                all_held_stored_s = time.monotonic() - freed
                assert mesh.wait_for(lambda: mesh.health()["status"] == "ok", WAIT_S, 0.3)
                healthy_s = time.monotonic() - freed
                errors = mesh.metric("meshelect_gateway_storage_errors_total")
                # The log gave back the space it took while the disk was full.
                assert mesh.wait_for(
                    lambda: os.path.getsize(mesh.gateway_db + "-wal") < wal_full, WAIT_S, 0.3
                )
                wal_after = os.path.getsize(mesh.gateway_db + "-wal")
                stored_alerts = mesh.get("/api/alerts?mesh=t-full") or []
                assert ("node_silent", "n4") in {(a["kind"], a["node"]) for a in stored_alerts}
                mesh.start_agent(4, 600)  # its journal brings back what it held when killed

                # -- 3. Full again, and the gateway is stopped meanwhile: a clean exit.
                filler = fill(folder)
                wait_degraded(mesh)
                assert mesh.gateway.stop() == 0
                output = "".join(mesh.gateway.output)
                assert "Traceback" not in output, output
                os.unlink(filler)
                mesh.gateway.start()

                def delivered() -> dict[str, Any] | None:
                    report = delivery_report(mesh, killed)
                    done = report["lost"] == report["lost_with_kill"] == 0
                    return report if done and report["in_flight_at_end"] <= 12 else None

                report = mesh.wait_for(delivered, WAIT_S, 0.5)
                assert report is not None, delivery_report(mesh, killed)
                dedup = mesh.metric("meshelect_gateway_dedup_hits_total")
                assert mesh.gateway.stop() == 0
            assert duplicates_in_db(mesh.gateway_db) == 0
            print(
                "full disk: all readings held while full stored %.1f s after space returned, "
                "healthz ok after %.1f s; WAL %d -> %d bytes while full, %d after; storage "
                "errors %d (first "
                "gateway process); readings taken %d stored %d lost %d lost with kill %d in "
                "flight at end %d duplicates stored 0 (dedup hits %d, last gateway process)"
                % (
                    all_held_stored_s,
                    healthy_s,
                    wal_before,
                    wal_full,
                    wal_after,
                    errors,
                    report["taken"],
                    report["stored"],
                    report["lost"],
                    report["lost_with_kill"],
                    report["in_flight_at_end"],
                    dedup,
                )
            )
        finally:
            mesh.close()
            mesh.cleanup()
