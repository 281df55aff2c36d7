"""The pytest plugin: ``--hil-lab FILE``, fixtures ``hil_lab -> boards -> strategy``, the
``hil_feature`` marker, provenance in the test report.

Registered as a pytest11 entry point (``meshelect-hil = "hil.plugin"``), so it is loaded by
every pytest run of an environment where meshelect is installed. Without ``--hil-lab`` it does
nothing but add the option and the marker: this module imports only pytest and the standard
library at load time; the drivers are imported when a lab is opened. Disable it entirely with
``-p no:meshelect-hil``.

    pytest --hil-lab hil/labs/virtual-3.toml hil/suite [--hil-workdir DIR]

- ``hil_lab`` (session): the opened lab (``hil.target.HilLab``); skips without ``--hil-lab``.
  Records ``hil_lab``, ``hil_lab_type``, ``git_sha`` and ``firmware_build`` with
  ``record_testsuite_property`` (they land in ``--junitxml`` reports).
- ``boards`` (session): board name -> its drivers (``firmware``, ``power``, ``console``).
- ``strategy`` (session): ``hil.strategy.MeshStrategy``, one ``BoardStrategy`` per board.
- ``gateway`` (session): the lab's ``GatewayDriver`` (skips if the lab has none).
- ``@pytest.mark.hil_feature("power-cycle", ...)``: skips unless the lab has every feature.
- ``@pytest.mark.hardware``: skips on a virtual lab.
- A test using ``strategy`` or ``boards`` after a board's strategy broke is skipped, naming
  the first failure (labgrid's rule: the failure is reported once, by the test that hit it).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hil.drivers import GatewayDriver
    from hil.resources import LabSpec
    from hil.strategy import MeshStrategy
    from hil.target import Board, HilLab

LAB_OPTION = "--hil-lab"
WORKDIR_OPTION = "--hil-workdir"
_SPEC_KEY: pytest.StashKey[LabSpec | None] = pytest.StashKey()
_STRATEGY_KEY: pytest.StashKey[MeshStrategy | None] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshelect-hil", "meshelect hardware-in-the-loop")
    group.addoption(
        LAB_OPTION,
        metavar="FILE",
        default=None,
        help="lab file (TOML) describing the boards to test; without it HIL tests skip",
    )
    group.addoption(
        WORKDIR_OPTION,
        metavar="DIR",
        default=None,
        help="keep the lab's build, board folders, consoles and gateway log here "
        "(default: a temporary folder, deleted at the end)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hil_feature(*names): skip unless the HIL lab (--hil-lab) has these features"
    )
    config.addinivalue_line("markers", "hardware: needs real boards")
    config.stash[_STRATEGY_KEY] = None
    config.stash[_SPEC_KEY] = None
    path = config.getoption(LAB_OPTION)
    if path:
        from hil.labfile import LabFileError, load_lab

        try:
            config.stash[_SPEC_KEY] = load_lab(path)
        except LabFileError as exc:
            raise pytest.UsageError(str(exc)) from None


def pytest_runtest_setup(item: pytest.Item) -> None:
    spec = item.config.stash.get(_SPEC_KEY, None)
    wanted = [name for mark in item.iter_markers("hil_feature") for name in mark.args]
    if wanted and spec is None:
        pytest.skip("HIL test: no lab given (use %s FILE)" % LAB_OPTION)
    if spec is None:
        return
    lacking = sorted(name for name in set(wanted) if not spec.has(name))
    if lacking:
        pytest.skip("lab %s lacks feature(s): %s" % (spec.name, ", ".join(lacking)))
    if item.get_closest_marker("hardware") and spec.kind == "virtual":
        pytest.skip("hardware test: lab %s is virtual" % spec.name)
    strategy = item.config.stash.get(_STRATEGY_KEY, None)
    uses_boards = {"strategy", "boards"} & set(getattr(item, "fixturenames", ()))
    if strategy is not None and strategy.broken and uses_boards:
        name, exc = sorted(strategy.broken.items())[0]
        pytest.skip("board %s is broken since an earlier test: %s" % (name, exc))


@pytest.fixture(scope="session")
def hil_lab(
    request: pytest.FixtureRequest, record_testsuite_property: Callable[[str, object], None]
) -> Iterator[HilLab]:
    """The lab given with --hil-lab, opened (built, flashed nothing yet) for the session."""
    spec = request.config.stash.get(_SPEC_KEY, None)
    if spec is None:
        pytest.skip("no HIL lab given (use %s FILE)" % LAB_OPTION)
    from hil.lab import git_sha, open_lab

    keep = request.config.getoption(WORKDIR_OPTION)
    with contextlib.ExitStack() as stack:
        if keep:
            workdir = Path(keep).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="meshelect-hil-"))
            )
        lab = open_lab(spec, workdir)
        try:
            record_testsuite_property("hil_lab", str(spec.path))
            record_testsuite_property("hil_lab_type", spec.kind)
            record_testsuite_property("hil_boards", ",".join(spec.names()))
            record_testsuite_property("git_sha", git_sha())
            record_testsuite_property("firmware_build", lab.build_hash)
            record_testsuite_property("mpy_version", str(lab.manifest.get("mpy_version")))
            yield lab
        finally:
            lab.close()


@pytest.fixture(scope="session")
def boards(hil_lab: HilLab) -> dict[str, Board]:
    """Board name -> its drivers: ``.firmware``, ``.power``, ``.console``."""
    return dict(sorted(hil_lab.boards.items()))


@pytest.fixture(scope="session")
def strategy(request: pytest.FixtureRequest, hil_lab: HilLab, boards: Any) -> MeshStrategy:
    """One ``BoardStrategy`` per board; tests call ``strategy.transition("joined")``."""
    mesh_strategy = hil_lab.strategy()
    request.config.stash[_STRATEGY_KEY] = mesh_strategy
    return mesh_strategy


@pytest.fixture(scope="session")
def gateway(hil_lab: HilLab) -> GatewayDriver:
    """The lab's gateway API."""
    if hil_lab.gateway is None:
        pytest.skip("lab %s has no gateway" % hil_lab.spec.name)
    return hil_lab.gateway
