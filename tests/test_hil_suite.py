"""End to end: the HIL suite (hil/suite) run as its own pytest session through labgrid's
plugin against the virtual lab hil/envs/virtual-3.yaml: 3 unix-port boards in network
namespaces (mh-, 10.96.0.0/24) and the real gateway. The mesh elects, power loss of the
leader elects another, readings reach the gateway exactly once, also across a power cut of
every board, and a board reflashed mid-run; the MQTT and serial-console
tests skip for lack of those features. The MQTT environment runs the broker restart. Each
test's console lines per board land in the JUnit report. With real boards: ``--run-hardware``
and ``MESHELECT_HIL_ENV=my-bench.yaml``."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testkit.mpy import interpreter
from testkit.netns import require_netns, run_tag
from testkit.tools import require_tool
from tests.paths import REPO_ROOT

SUITE = REPO_ROOT / "hil" / "suite"
ENVS = REPO_ROOT / "hil" / "envs"
SUITE_TIMEOUT_S = 240.0  # a bound for a hung child, not a timing assertion


def run_suite(
    env_file: Path, report: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], ET.Element | None]:
    """The suite in a child pytest; ``returncode``, output and the child's namespace prefix
    (``<bench prefix><pid tag>-``: names its own benches, not a concurrent run's)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    argv = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsx", "-v", "-s",
        "--lg-env", str(env_file), "--junitxml", str(report), str(SUITE), *args,
    ]  # fmt: skip
    with subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        try:
            out, err = child.communicate(timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
    done = subprocess.CompletedProcess(argv, child.returncode, out, err)
    done.run_tag = run_tag(child.pid)  # type: ignore[attr-defined]
    root = ET.parse(report).getroot() if report.exists() else None
    return done, root


def namespaces_left(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [n for n in listed.stdout.split() if n.startswith(prefix)]


def suite_properties(root: ET.Element) -> dict[str, str]:
    suite = root.find("testsuite")
    assert suite is not None
    found = suite.find("properties")
    assert found is not None
    return {str(p.get("name")): str(p.get("value")) for p in found.iter("property")}


def case_properties(root: ET.Element, name: str) -> dict[str, str]:
    for case in root.iter("testcase"):
        if case.get("name") == name:
            return {str(p.get("name")): str(p.get("value")) for p in case.iter("property")}
    raise AssertionError("no test case %s in the report" % name)


@pytest.mark.netns
@pytest.mark.micropython
@pytest.mark.slow
def test_hil_suite_on_the_virtual_lab(tmp_path: Path) -> None:
    require_netns()
    require_tool("mpy-cross")
    done, root = run_suite(ENVS / "virtual-3.yaml", tmp_path / "report.xml")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "5 passed, 3 skipped" in done.stdout, output
    assert "unsupported feature(s): mqtt" in done.stdout
    assert "unsupported feature(s): serial-console" in done.stdout
    assert "unsupported feature(s): pi" in done.stdout
    assert root is not None
    properties = suite_properties(root)
    assert properties["hil_boards"] == "vb-1,vb-2,vb-3"
    assert properties["ENV_CONFIG"].endswith("virtual-3.yaml")  # labgrid's own
    assert len(properties["firmware_build"]) == 16 and properties["mpy_version"]
    # Each board's console lines of that test, attached to the test's report.
    attached = case_properties(root, "test_mesh_elects_one_leader_the_gateway_knows")
    for board in ("vb-1", "vb-2", "vb-3"):
        assert '"node": "%s"' % board in attached["console:%s" % board]
    for line in done.stdout.splitlines():
        if "failover" in line or "stored once" in line or "gateway term" in line:
            print(line.lstrip("."))
    # Nothing left behind by this run's bench.
    assert not namespaces_left("mh-%s-" % done.run_tag)  # type: ignore[attr-defined]


@pytest.mark.netns
@pytest.mark.micropython
@pytest.mark.slow
def test_hil_suite_on_the_32bit_virtual_lab(tmp_path: Path) -> None:
    """The unchanged suite on boards that run the 32-bit stand-in (an ESP32's word size):
    election, power loss of the leader, exactly once, the power cut, the reflashed board."""
    require_netns()
    require_tool("mpy-cross")
    interpreter(32)  # built (or refrozen) first: the env file names .cache/micropython-32
    done, root = run_suite(ENVS / "virtual-3-32bit.yaml", tmp_path / "report.xml")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "5 passed, 3 skipped" in done.stdout, output
    assert root is not None
    assert suite_properties(root)["hil_boards"] == "vb-1,vb-2,vb-3"
    assert not namespaces_left("mw-%s-" % done.run_tag)  # type: ignore[attr-defined]


@pytest.mark.netns
@pytest.mark.micropython
@pytest.mark.broker
@pytest.mark.slow
def test_hil_suite_broker_restart_in_mqtt_mode(tmp_path: Path) -> None:
    require_netns()
    require_tool("mpy-cross")
    done, _ = run_suite(ENVS / "virtual-3-mqtt.yaml", tmp_path / "report.xml", "-k", "broker")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "1 passed" in done.stdout, output
    assert not namespaces_left("mq-%s-" % done.run_tag)  # type: ignore[attr-defined]


@pytest.mark.hardware
def test_hil_suite_on_real_boards(tmp_path: Path) -> None:
    """Runs with --run-hardware and MESHELECT_HIL_ENV naming a real bench's env file."""
    env_file = os.environ.get("MESHELECT_HIL_ENV")
    if not env_file:
        pytest.skip("hardware test: set MESHELECT_HIL_ENV to a real bench's env file")
    done, _ = run_suite(Path(env_file), tmp_path / "report.xml")
    assert done.returncode == 0, done.stdout + done.stderr
