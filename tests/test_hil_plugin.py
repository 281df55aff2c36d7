"""The HIL plugin on top of labgrid's, run for real in child pytest processes: idle without an
environment (also when auto-loaded through its entry point), usage errors naming the key for
bad environment files, and a bench whose flashing fails: reported once with the board and
the cause, later tests skipped naming it, the console attached in the JUnit report."""

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
def test_plain():
    assert True


def test_uses_the_mesh(mesh):
    raise AssertionError("must be skipped")
"""


def write_suite(folder: Path, text: str = SUITE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (folder / "test_suite.py").write_text(text)
    return folder


def test_without_an_environment_hil_tests_skip(tmp_path: Path) -> None:
    folder = write_suite(tmp_path / "suite")
    done = run_pytest(folder, *plugin_args())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert "missing environment config (use --lg-env)" in done.stdout  # labgrid's own skip


def test_importing_the_plugin_loads_no_driver_code() -> None:
    """The entry point imports this module in every pytest run: it must stay light."""
    code = (
        "import sys, time; t = time.perf_counter(); import hil.plugin; "
        "t = time.perf_counter() - t; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('hil', 'agent', 'serial', 'labgrid')))); "
        "print('import ms %.1f' % (t * 1000), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['hil', 'hil.plugin']"
    print("hil.plugin %s (pytest itself already imported in a real run)" % done.stderr.strip())


def fake_install(folder: Path) -> Path:
    """A dist-info declaring the same entry point as pyproject.toml, so auto-loading is
    tested for real whatever the installed metadata says."""
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
    if plugin_args():  # the real entry point is not installed: only the probe loads it
        done = run_pytest(folder, pythonpath=pythonpath)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 passed, 1 skipped" in done.stdout
    helped = run_pytest(folder, "--help", pythonpath=pythonpath)
    assert "--hil-workdir=DIR" in helped.stdout and "--lg-env" in helped.stdout
    # A real module of the normal suite, with both plugins auto-loaded: unchanged.
    normal = run_pytest(
        REPO_ROOT,
        "-o",
        "addopts=",
        str(REPO_ROOT / "tests" / "test_wire.py"),
        pythonpath=pythonpath,
    )
    assert normal.returncode == 0, normal.stdout[-2000:] + normal.stderr[-2000:]
    # And it can be switched off by name.
    disabled = run_pytest(folder, "-p", "no:%s" % ENTRY_POINT, "--help", pythonpath=pythonpath)
    assert "--hil-workdir" not in disabled.stdout


BAD_BOARD = """
imports: [hil.drivers]
targets:
  vb-1:
    resources:
      MicroPythonUnixPort: {%s}
    drivers:
      MicroPythonUnixDriver: {}
      MeshConsoleDriver: {}
      MeshDeployDriver: {config: {%s}}
      MeshNodeStrategy: {%s}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"environment .*missing\.yaml: configuration file .* could not be found"),
        ("targets: [\n", "Error in configuration file"),
        (
            BAD_BOARD % ("host: 1, netns: n, address: a, folder: f", "mesh: m", "boot_secs: 5.0"),
            r"targets\.vb-1\.drivers\.MeshNodeStrategy\.boot_secs: unknown key",
        ),
        (
            BAD_BOARD % ("netns: n, address: a, folder: f", "mesh: m", ""),
            r"targets\.vb-1\.resources\.MicroPythonUnixPort\.host: missing",
        ),
        (
            BAD_BOARD % ("host: 1, netns: n, address: a, folder: f", "data: {sample_ms: 0}", ""),
            r"targets\.vb-1\.drivers\.MeshDeployDriver\.config\.data\.sample_ms: expected a "
            r"positive integer",
        ),
    ],
)
def test_a_bad_environment_is_a_usage_error_naming_the_key(
    tmp_path: Path, text: str | None, message: str
) -> None:
    folder = write_suite(tmp_path / "suite")
    env_file = tmp_path / "missing.yaml"
    if text is not None:
        env_file.write_text(text)
    done = run_pytest(folder, *plugin_args(), "--lg-env", str(env_file))
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr


BROKEN_BENCH = """
imports: [hil.drivers]
features: [udp]
targets:
  esp-1:
    resources:
      RawSerialPort: {port: /dev/hil-test-no-such-port, speed: 115200}
    drivers:
      ExternalPowerDriver: {cmd_on: "true", cmd_off: "true"}
      SerialDriver: {}
      MeshConsoleDriver: {}
      EsptoolDriver: {image: missing.bin, chip: esp32}
      MeshDeployDriver: {config: {mesh: bench}}
      MeshNodeStrategy: {boot_s: 1.0, join_s: 1.0}
"""

BROKEN_SUITE = """
import pytest


def test_a_first_flash(mesh):
    mesh.transition("joined")


def test_b_later(mesh):
    raise AssertionError("must be skipped: the board is broken")


@pytest.mark.lg_feature("wifi")
def test_c_wifi(mesh):
    raise AssertionError("must be skipped: the bench lacks wifi")


@pytest.mark.lg_feature("udp")
def test_d_udp(env):
    assert "esp-1" in env.config.get_targets()
"""


def test_a_flashing_failure_is_reported_once_with_the_board_and_the_cause(
    tmp_path: Path,
) -> None:
    """A bench whose image is missing: the first test fails naming the board and the image,
    later tests of the mesh skip naming that failure (a test of the environment alone still
    runs); provenance and the board's console are in the JUnit report."""
    require_tool("mpy-cross", "the mesh fixture builds the firmware")
    folder = write_suite(tmp_path / "suite", BROKEN_SUITE)
    env_file = tmp_path / "bench.yaml"
    env_file.write_text(BROKEN_BENCH)
    report = tmp_path / "report.xml"
    done = run_pytest(
        folder,
        *plugin_args(),
        "--lg-env",
        str(env_file),
        "--junitxml",
        str(report),
        "-p",
        "no:randomly",
    )
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "1 failed, 1 passed, 2 skipped" in done.stdout, output
    missing = str(tmp_path / "missing.bin")
    assert "board esp-1: flashing failed: image %s does not exist" % missing in done.stdout
    assert "board esp-1 is broken since an earlier test: HilError" in done.stdout
    assert "unsupported feature(s): wifi" in done.stdout
    root = ET.parse(report).getroot()
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties["ENV_CONFIG"] == str(env_file)
    assert properties["hil_boards"] == "esp-1"
    assert len(properties["git_sha"]) == 40 or properties["git_sha"] == "unknown"
    assert len(properties["firmware_build"]) == 16
    assert "console:esp-1" in properties  # nothing printed: the board never ran
