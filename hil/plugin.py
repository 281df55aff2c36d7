"""meshelect's pytest plugin, on top of labgrid's (``--lg-env``, ``env``, ``lg_feature``).

Registered as a pytest11 entry point (``meshelect-hil = "hil.plugin"``), as labgrid's own
plugin is, so both load in every pytest run of an environment where meshelect is installed.
Without ``--lg-env`` this one only adds its options: it imports pytest and the standard
library at load time, labgrid and the drivers only once an environment is given. Disable it
with ``-p no:meshelect-hil``.

    pytest --lg-env hil/envs/virtual-3.yaml hil/suite [--hil-workdir DIR] [--junitxml R.xml]

What it adds to labgrid's plugin:

- ``--lg-env`` files are checked before labgrid builds anything (``hil.envcheck``): a
  mistake is a usage error naming the key (labgrid itself drops unknown keys with a warning).
- ``mesh`` (session): ``hil.mesh.Mesh``, every board's ``MeshNodeStrategy`` by name;
  ``mesh.transition("joined")``, ``mesh["vb-1"].transition("off")``. Records ``hil_boards``,
  ``git_sha``, ``firmware_build`` and ``mpy_version`` as test-suite properties.
- ``gateway`` (session): the ``MeshGatewayDriver``, activated; ``broker``: the
  ``MeshBrokerDriver`` (skips when the environment has none).
- A test using ``mesh``, ``gateway`` or ``broker`` after a board's strategy broke is
  skipped, naming the board and the first failure (labgrid's rule, applied to every board).
- Each such test's console lines, per board, go into the JUnit report as properties
  ``console:<board>``; a failing test also shows them in its report.
- ``--hil-workdir DIR`` keeps the build, the consoles' logs, the bench's gateway log and
  database (default: a temporary folder, deleted at the end).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hil.drivers.broker import MeshBrokerDriver
    from hil.drivers.gateway import MeshGatewayDriver
    from hil.mesh import Mesh

WORKDIR_OPTION = "--hil-workdir"
MESH_FIXTURES = frozenset({"mesh", "gateway", "broker"})
ATTACH_LINES = 400  # console lines per board and test in the report (the log keeps all)
_MESH_KEY: pytest.StashKey[Mesh | None] = pytest.StashKey()
_COUNTS_KEY: pytest.StashKey[dict[str, int]] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("meshelect-hil", "meshelect hardware-in-the-loop (on labgrid)")
    group.addoption(
        WORKDIR_OPTION,
        metavar="DIR",
        default=None,
        help="keep the firmware build, console logs, the virtual bench's gateway log and "
        "database here (default: a temporary folder, deleted at the end)",
    )


def env_file(config: pytest.Config) -> str | None:
    """The environment labgrid's plugin will load (``--lg-env`` or ``LG_ENV``)."""
    path = getattr(config.option, "lg_env", None) or os.environ.get("LG_ENV")
    return str(path) if path else None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_MESH_KEY] = None
    path = env_file(config)
    if path:
        from hil.envcheck import EnvError, check_env

        try:
            check_env(path)
        except EnvError as exc:
            raise pytest.UsageError(str(exc)) from None


def pytest_runtest_setup(item: pytest.Item) -> None:
    mesh = item.config.stash.get(_MESH_KEY, None)
    if mesh is None:
        return
    item.stash[_COUNTS_KEY] = mesh.console_counts()
    if MESH_FIXTURES & set(getattr(item, "fixturenames", ())) and mesh.broken:
        name, exc = sorted(mesh.broken.items())[0]
        pytest.skip(
            "board %s is broken since an earlier test: %s: %s" % (name, type(exc).__name__, exc)
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    mesh = item.config.stash.get(_MESH_KEY, None)
    uses_mesh = MESH_FIXTURES & set(getattr(item, "fixturenames", ()))
    consoles: dict[str, str] = {}
    if mesh is not None and uses_mesh and call.when in ("call", "teardown"):
        consoles = _console_text(mesh, item.stash.get(_COUNTS_KEY, {}))
        if call.when == "teardown":
            for name, text in consoles.items():
                item.user_properties.append(("console:%s" % name, text))
    report = yield
    if call.when == "call" and report.failed:
        for name, text in consoles.items():
            report.sections.append(("console %s" % name, text or "(nothing printed)"))
    return report


def _console_text(mesh: Mesh, counts: dict[str, int]) -> dict[str, str]:
    out = {}
    for name, strategy in mesh.boards.items():
        console = strategy.console
        with contextlib.suppress(Exception):  # a broken board's console may be gone
            if console.state.name == "active":
                console.read()
        lines = console.lines_since(counts.get(name, 0))[-ATTACH_LINES:]
        out[name] = "\n".join(lines)
    return out


@pytest.fixture(scope="session")
def mesh(
    request: pytest.FixtureRequest,
    env: Any,
    record_testsuite_property: Any,
) -> Iterator[Mesh]:
    """Every board of the environment (``hil.mesh.Mesh``); skips if it has none."""
    from hil.drivers.common import WORKDIR_OPTION as OPTION
    from hil.drivers.common import firmware_build
    from hil.mesh import Mesh

    with contextlib.ExitStack() as stack:
        keep = request.config.getoption(WORKDIR_OPTION)
        if keep:
            workdir = Path(keep).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(tempfile.mkdtemp(prefix="meshelect-hil-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        env.config.set_option(OPTION, str(workdir))
        stack.callback(env.cleanup)  # before the folder goes: processes write into it
        found = Mesh(env)
        if not found.boards:
            pytest.skip("environment %s has no MeshNodeStrategy target" % env.config_file)
        first = next(iter(found.boards.values()))
        _, manifest, build_hash = firmware_build(first.target)
        record_testsuite_property("hil_boards", ",".join(found.names))
        record_testsuite_property("git_sha", git_sha())
        record_testsuite_property("firmware_build", build_hash)
        record_testsuite_property("mpy_version", str(manifest.get("mpy_version")))
        request.config.stash[_MESH_KEY] = found
        yield found
        request.config.stash[_MESH_KEY] = None


@pytest.fixture(scope="session")
def gateway(mesh: Mesh) -> MeshGatewayDriver:
    """The gateway's API (``MeshGatewayDriver``), activated."""
    if mesh.gateway_target is None:
        pytest.skip("the environment has no MeshGatewayDriver")
    driver: MeshGatewayDriver = mesh.gateway_target.get_driver("MeshGatewayDriver")
    return driver


@pytest.fixture(scope="session")
def broker(mesh: Mesh) -> MeshBrokerDriver:
    """The MQTT broker (``MeshBrokerDriver``), activated."""
    if mesh.broker_target is None:
        pytest.skip("the environment has no MeshBrokerDriver")
    driver: MeshBrokerDriver = mesh.broker_target.get_driver("MeshBrokerDriver")
    return driver


def git_sha() -> str:
    """The checkout's commit (read-only git call), or "unknown" outside a checkout."""
    from testkit.tools import SOURCE_ROOT

    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"
