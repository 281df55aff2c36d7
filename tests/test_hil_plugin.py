"""The HIL pytest plugin, run for real in child pytest processes: idle without a lab (also
when auto-loaded through its entry point), clear errors for bad lab files, feature and
hardware skips, sticky broken boards, and provenance in the JUnit report."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testkit.tools import require_tool
from tests.paths import REPO_ROOT

ENTRY_POINT = "meshelect-hil"


def plugin_args() -> list[str]:
    """``-p hil.plugin`` unless the installed entry point loads it already (both at once is
    a "Plugin already registered" error in pytest)."""
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="pytest11")}
    return [] if ENTRY_POINT in names else ["-p", "hil.plugin"]


def run_pytest(
    folder: Path, *args: str, pythonpath: str = str(REPO_ROOT), timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """A child pytest in ``folder`` (its own rootdir, so the repo's conftest stays out)."""
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": pythonpath, "HOME": "/root"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


SUITE = """
import pytest


def test_plain():
    assert True


@pytest.mark.hil_feature("udp")
def test_needs_a_lab():
    raise AssertionError("must be skipped")


def test_uses_boards(boards):
    raise AssertionError("must be skipped")
"""


def write_suite(folder: Path, text: str = SUITE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (folder / "test_suite.py").write_text(text)
    return folder


def test_without_a_lab_the_plugin_only_skips_hil_tests(tmp_path: Path) -> None:
    folder = write_suite(tmp_path / "suite")
    done = run_pytest(folder, *plugin_args())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout
    assert "HIL test: no lab given (use --hil-lab FILE)" in done.stdout
    assert "no HIL lab given (use --hil-lab FILE)" in done.stdout


def test_importing_the_plugin_loads_no_driver_code() -> None:
    """The entry point imports this module in every pytest run: it must stay light."""
    code = (
        "import sys, time; t = time.perf_counter(); import hil.plugin; "
        "t = time.perf_counter() - t; "
        "print(sorted(m for m in sys.modules if m.startswith(('hil', 'agent', 'serial')))); "
        "print('import ms %.1f' % (t * 1000), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['hil', 'hil.plugin']"
    print("hil.plugin %s (pytest itself already imported in a real run)" % done.stderr.strip())


def fake_install(folder: Path) -> Path:
    """A dist-info declaring the same entry point the lead adds to pyproject.toml, so the
    auto-loading is tested for real before the package is reinstalled with it."""
    info = folder / "meshelect_hil_probe-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: meshelect-hil-probe\nVersion: 0.0\n"
    )
    (info / "entry_points.txt").write_text("[pytest11]\n%s = hil.plugin\n" % ENTRY_POINT)
    return folder


def test_auto_loaded_by_its_entry_point_it_leaves_a_normal_run_alone(tmp_path: Path) -> None:
    site = fake_install(tmp_path / "site")
    pythonpath = "%s:%s" % (site, REPO_ROOT)
    folder = write_suite(tmp_path / "suite")
    done = run_pytest(folder, pythonpath=pythonpath)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout  # the marker is registered: --strict-markers ok
    helped = run_pytest(folder, "--help", pythonpath=pythonpath)
    assert "--hil-lab=FILE" in helped.stdout
    # A real module of the normal suite, with the plugin auto-loaded: unchanged.
    normal = run_pytest(
        REPO_ROOT,
        "-o",
        "addopts=",
        str(REPO_ROOT / "tests" / "test_wire.py"),
        pythonpath=pythonpath,
    )
    assert normal.returncode == 0, normal.stdout[-2000:] + normal.stderr[-2000:]
    # And it can be switched off by name.
    disabled = run_pytest(folder, "-p", "no:%s" % ENTRY_POINT, pythonpath=pythonpath)
    assert disabled.returncode != 0 and "hil_feature" in disabled.stdout + disabled.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "lab file .*missing.toml"),
        ("[lab\n", "is not valid TOML"),
        ('[lab]\ntype = "virtual"\n', r"no \[\[board\]\] tables"),
    ],
)
def test_a_bad_lab_file_is_a_usage_error(tmp_path: Path, text: str | None, message: str) -> None:
    folder = write_suite(tmp_path / "suite")
    lab = tmp_path / "missing.toml"
    if text is not None:
        lab.write_text(text)
    done = run_pytest(folder, *plugin_args(), "--hil-lab", str(lab))
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr


BROKEN_LAB = """
[lab]
name = "no-boards-attached"
type = "real"
features = ["udp"]
boot_s = 1
join_s = 1

[defaults]
mesh = "bench"

[[board]]
node_id = "esp-1"
port = "/dev/hil-test-no-such-port"
power_on = "true"
power_off = "true"
"""

BROKEN_SUITE = """
import pytest


def test_a_first_flash(strategy):
    strategy.transition("joined")


def test_b_later(strategy):
    raise AssertionError("must be skipped: the board is broken")


@pytest.mark.hil_feature("wifi")
def test_c_wifi(strategy):
    raise AssertionError("must be skipped: the lab lacks wifi")


@pytest.mark.hil_feature("udp")
def test_d_udp(hil_lab):
    assert hil_lab.spec.kind == "real"
"""


def test_a_board_that_fails_is_reported_once_then_skipped(tmp_path: Path) -> None:
    """A real lab whose serial port is absent: the first test fails with the port's name,
    later tests of the boards skip naming that failure (a test of the lab alone still runs);
    provenance is in the JUnit report."""
    require_tool("mpy-cross", "the lab builds the firmware")
    folder = write_suite(tmp_path / "suite", BROKEN_SUITE)
    lab = tmp_path / "lab.toml"
    lab.write_text(BROKEN_LAB)
    report = tmp_path / "report.xml"
    done = run_pytest(
        folder,
        *plugin_args(),
        "--hil-lab",
        str(lab),
        "--junitxml",
        str(report),
        "-p",
        "no:randomly",
    )
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "1 failed, 1 passed, 2 skipped" in done.stdout, output
    assert "serial port /dev/hil-test-no-such-port does not exist" in done.stdout
    assert "board esp-1 is broken since an earlier test" in done.stdout
    assert "lab no-boards-attached lacks feature(s): wifi" in done.stdout
    properties = {
        p.get("name"): p.get("value") for p in ET.parse(report).getroot().iter("property")
    }
    assert properties["hil_lab"] == str(lab)
    assert properties["hil_lab_type"] == "real"
    assert properties["hil_boards"] == "esp-1"
    assert len(properties["git_sha"]) == 40 or properties["git_sha"] == "unknown"
    assert len(properties["firmware_build"]) == 16
