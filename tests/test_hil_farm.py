"""A shared farm for real: ``labgrid-coordinator`` and ``labgrid-exporter`` on loopback (free
port), a virtual bench exported as the place ``virtual-3``, and two test sessions that both
want it. The second waits for the lock (a labgrid reservation) while the first holds it, and
both suites pass: neither saw the other's boards.

Both sessions run the suite's election test only (each reflashes the boards, so later tests
would meet issue 9's restart bugs, which the suite covers on its own)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.netns import require_netns
from testkit.tools import require_tool
from tests.paths import REPO_ROOT

FARM_ENV = REPO_ROOT / "hil" / "envs" / "farm-virtual-3.yaml"
SUITE = REPO_ROOT / "hil" / "suite"
PLACE = "virtual-3"
SESSION_TIMEOUT_S = 180.0  # a bound for a hung child, not a timing assertion


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[str]:
    """A coordinator and an exporter publishing a virtual bench as place ``virtual-3``;
    yields the coordinator's address. Everything stops, also when the test fails."""
    require_netns()
    require_tool("mpy-cross")
    from hil import farm as farm_module
    from hil.bench import Bench

    coordinator = farm_module.Coordinator(tmp_path / "coordinator")
    bench = Bench(
        tmp_path / "bench",
        boards=3,
        mesh="hil",
        mesh_key="68696c2d6c61622d6b6579",
        prefix="mf-",
        subnet="10.98.0.0/24",
    )
    exporter = None
    try:
        coordinator.start()
        bench.open()
        config = tmp_path / "exporter.yaml"
        config.write_text(farm_module.exporter_config(bench, PLACE))
        exporter = farm_module.Exporter(config, coordinator.address, "farm-1", tmp_path)
        exporter.start()
        farm_module.create_place(coordinator.address, PLACE, "farm-1", PLACE)
        farm_module.wait_resources(coordinator.address, PLACE, 4)
        yield coordinator.address
    finally:
        if exporter is not None:
            exporter.stop()
        bench.close()
        coordinator.stop()


def run_session(coordinator: str, workdir: Path, log: dict[str, Any]) -> None:
    """One test session: hold the place (waiting if needed), run the suite's election test."""
    from hil import farm as farm_module

    log["asked"] = time.monotonic()
    with farm_module.locked(coordinator, PLACE):
        log["locked"] = time.monotonic()
        log["run"] = subprocess.run(
            [
                sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                "--lg-env", str(FARM_ENV), "--lg-coordinator", coordinator,
                "--hil-workdir", str(workdir), str(SUITE), "-k", "elects_one_leader",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=SESSION_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        log["released"] = time.monotonic()


@pytest.mark.netns
@pytest.mark.micropython
@pytest.mark.slow
def test_two_sessions_share_one_place_one_waits_for_the_lock(farm: str, tmp_path: Path) -> None:
    from hil import farm as farm_module

    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    errors: list[BaseException] = []

    def session(log: dict[str, Any], name: str) -> None:
        try:
            run_session(farm, tmp_path / name, log)
        except BaseException as exc:
            errors.append(exc)

    a = threading.Thread(target=session, args=(first, "a"))
    a.start()
    while "locked" not in first and a.is_alive():
        time.sleep(0.05)
    assert "locked" in first, errors
    # While the first session holds the place, a plain lock is refused, naming the holder...
    refused = farm_module.client(farm, "-p", PLACE, "lock", check=False)
    assert refused.returncode != 0
    assert "already acquired" in refused.stdout + refused.stderr
    # ...and a second session waits for it.
    b = threading.Thread(target=session, args=(second, "b"))
    b.start()
    a.join(SESSION_TIMEOUT_S)
    b.join(SESSION_TIMEOUT_S)
    assert not errors, errors
    for log in (first, second):
        run = log["run"]
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "1 passed" in run.stdout
        print(run.stdout.strip().splitlines()[-1])
    assert second["asked"] < first["released"] <= second["locked"], (first, second)
    print("second session waited %.1f s for the place" % (second["locked"] - second["asked"]))
    # The command-line form holds the place around any command and passes its status on.
    for command, status in (("true", 0), ("false", 1)):
        done = subprocess.run(
            [sys.executable, "-m", "hil.farm", "run", "--coordinator", farm, "--place", PLACE,
             "--", command],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == status, done.stdout + done.stderr
    shown = farm_module.client(farm, "-p", PLACE, "show").stdout
    assert "acquired: None" in shown  # released again
