"""End to end: the HIL suite (hil/suite) run as its own pytest session against the virtual
lab hil/labs/virtual-3.toml: 3 unix-port boards in network namespaces (mh-, 10.96.0.0/24)
and the real gateway. The mesh elects, power loss of the leader elects another, readings
reach the gateway exactly once; the hardware-only test skips. With real boards:
``--run-hardware`` and ``MESHELECT_HIL_LAB=my-lab.toml``."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testkit.netns import require_netns
from testkit.tools import require_tool
from tests.paths import REPO_ROOT
from tests.test_hil_plugin import plugin_args

SUITE = REPO_ROOT / "hil" / "suite"
VIRTUAL_LAB = REPO_ROOT / "hil" / "labs" / "virtual-3.toml"
SUITE_TIMEOUT_S = 240.0  # a bound for a hung child, not a timing assertion


def run_suite(lab: Path, report: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v", "-s",
            *plugin_args(), "--hil-lab", str(lab), "--junitxml", str(report), str(SUITE),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    properties: dict[str, str] = {}
    if report.exists():
        for prop in ET.parse(report).getroot().iter("property"):
            properties[str(prop.get("name"))] = str(prop.get("value"))
    return done, properties


@pytest.mark.netns
@pytest.mark.micropython
@pytest.mark.slow
def test_hil_suite_on_the_virtual_lab(tmp_path: Path) -> None:
    require_netns()
    require_tool("mpy-cross")
    done, properties = run_suite(VIRTUAL_LAB, tmp_path / "report.xml")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "3 passed, 1 skipped" in done.stdout, output
    assert "hardware test: lab virtual-3 is virtual" in done.stdout
    assert properties["hil_lab_type"] == "virtual"
    assert properties["hil_boards"] == "vb-1,vb-2,vb-3"
    assert len(properties["firmware_build"]) == 16 and properties["mpy_version"]
    for line in done.stdout.splitlines():
        if "failover" in line or "stored once" in line:
            print(line.lstrip("."))
    # Nothing left behind: no namespace of the lab's prefix.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    assert not [n for n in listed.stdout.split() if n.startswith("mh-")]


@pytest.mark.hardware
def test_hil_suite_on_real_boards(tmp_path: Path) -> None:
    """Runs with --run-hardware and MESHELECT_HIL_LAB naming a real lab file."""
    lab = os.environ.get("MESHELECT_HIL_LAB")
    if not lab:
        pytest.skip("hardware test: set MESHELECT_HIL_LAB to a real lab file")
    done, properties = run_suite(Path(lab), tmp_path / "report.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert properties["hil_lab_type"] == "real"
