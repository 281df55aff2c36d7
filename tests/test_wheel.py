"""The wheel stands on its own: built from this checkout and installed into a fresh venv, it
carries the test kit and the tools, runs `meshelect bench` and `meshelect firmware`, and finds
the firmware sources inside itself; nothing in it needs the checkout or the test suite.

Offline: uv takes hatchling and the dependencies from its cache, which scripts/setup.sh filled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from testkit.tools import require_tool
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.slow

PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import testkit, tools.firmware
print(testkit.__file__)
print(tools.firmware.firmware_source())
try:
    import tests
except ImportError:
    print("no tests package")
"""
KIT_AND_TOOLS = [
    "testkit.broker", "testkit.gateway", "testkit.meshlab", "testkit.mpy", "testkit.netns",
    "testkit.tls", "testkit.tools", "testkit.waiting", "tools.bench.cli", "tools.bench.core",
    "tools.bench.etcd", "tools.bench.failover", "tools.bench.gateway", "tools.bench.idle",
    "tools.bench.soak", "tools.firmware",
]  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the venv it is installed in)."""
    uv = require_tool("uv", "scripts/setup.sh installs it")
    folder = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")

    def run_uv(*args: str) -> None:
        done = subprocess.run(
            [uv, *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr

    run_uv("build", "--wheel", "--offline", "-q", "-o", str(folder / "dist"), str(REPO_ROOT))
    (wheel,) = (folder / "dist").glob("meshelect-*.whl")
    venv = folder / "venv"
    run_uv("venv", "-q", "--python", sys.executable, str(venv))
    # With the gateway's web stack: the failover, idle and gateway benches run the gateway.
    python = str(venv / "bin" / "python")
    run_uv("pip", "install", "-q", "--offline", "--python", python, "%s[gateway]" % wheel)
    return wheel, venv


def run_installed(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command of the venv, run away from the checkout, with no PYTHONPATH leading back."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_the_wheel_carries_the_kit_the_tools_and_the_firmware(
    installed: tuple[Path, Path],
) -> None:
    names = zipfile.ZipFile(installed[0]).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {"agent", "gateway", "hil", "testkit", "tools"} <= tops
    assert "tests" not in tops
    assert "agent/_firmware/main.py" in names
    assert "testkit/netns.py" in names and "tools/bench/failover.py" in names


def test_the_installed_kit_and_tools_import_without_the_checkout(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, venv = installed
    done = run_installed(venv, tmp_path, "python", "-c", PROBE, *KIT_AND_TOOLS)
    assert done.returncode == 0, done.stderr
    kit_file, firmware, no_tests = done.stdout.splitlines()
    site = str(venv / "lib")
    assert kit_file.startswith(site), kit_file  # the installed copy, not the checkout's
    assert firmware.startswith(site) and firmware.endswith("agent/_firmware")
    assert no_tests == "no tests package"


def test_the_installed_commands_run(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, venv = installed
    helped = run_installed(venv, tmp_path, "meshelect", "bench", "--help")
    assert helped.returncode == 0, helped.stderr
    for name in ("core", "failover", "idle", "gateway"):
        assert "  %s " % name in helped.stderr
    for command in (["bench", "failover", "--help"], ["firmware", "--help"]):
        done = run_installed(venv, tmp_path, "meshelect", *command)
        assert done.returncode == 0, done.stderr
        assert "usage: meshelect %s" % command[0] in done.stdout
    core = run_installed(
        venv, tmp_path, "meshelect", "bench", "core", "--sizes", "5", "--crashes", "2"
    )
    assert core.returncode == 0, core.stderr
    assert "failover measured" in core.stdout
