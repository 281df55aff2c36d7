"""Everything that must run on MicroPython compiles with mpy-cross, and the core imports there.

Files are collected when the tests are collected, so a new module is checked automatically.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.mpy import compile_mpy, run_micropython
from tests.paths import REPO_ROOT, python_files

MICROPYTHON_SOURCES = python_files("agent/core", "firmware")
CORE_MODULES = [
    ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in python_files("agent/core")
]


def relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_sources_were_found() -> None:
    assert any(relative(p).startswith("agent/core/") for p in MICROPYTHON_SOURCES)


@pytest.mark.parametrize("source", MICROPYTHON_SOURCES, ids=relative)
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    rc, messages = compile_mpy(source, tmp_path / (source.stem + ".mpy"))
    assert rc == 0, messages


@pytest.mark.micropython
@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_on_micropython(module: str) -> None:
    # The core is pure logic: importing it must not need anything the unix port lacks
    # (typing, dataclasses, enum, logging...). Firmware modules are exempt: they may import
    # hardware modules (machine, network) that only a board has.
    rc, out = run_micropython(code="import %s" % module)
    assert rc == 0, out
