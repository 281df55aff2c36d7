"""The shared core's public surface: what it imports, and its type stubs."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "agent" / "core"

# What a core module may import: the core itself, and modules both interpreters have.
SHARED_MODULES = {"micropython", "hashlib", "json", "sys", "gc", "heapq", "uheapq"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_nothing_of_either_runtime() -> None:
    # The CBOR functions (cbor2 made strict on CPython, firmware/lib/cbor.py on a board) are
    # passed to wire.Codec by its caller; nothing under agent/core picks one itself.
    for path in sorted(CORE.glob("*.py")):
        for name in _imported(path):
            assert name.startswith("agent.core") or name in SHARED_MODULES, (path.name, name)
