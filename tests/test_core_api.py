"""The shared core's public surface: what it imports, and its type stubs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from agent.core import topics

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


def test_the_mqtt_topic_table_in_the_design_is_the_code() -> None:
    text = (CORE.parent.parent / "docs" / "design.md").read_text()
    rows = re.findall(r"^  \| `P/<mesh>/([a-z-]+)(?:/<(\w+)>)?` \| [^|]+ \| (\d) \|$", text, re.M)
    kinds = [getattr(topics, name) for name in dir(topics) if name.isupper()]
    kinds = [kind for kind in kinds if isinstance(kind, str) and kind != topics.DEFAULT_PREFIX]
    assert sorted(kind for kind, _, _ in rows) == sorted(kinds)
    for kind, node, qos in rows:
        name = topics.topic("P", "<mesh>", kind, "<%s>" % node if node else None)
        assert name == "P/<mesh>/" + kind + ("/<%s>" % node if node else "")
        assert topics.qos(kind) == int(qos), kind
    assert topics.batch_filter("P") == "P/+/batch"
    assert topics.batch_mesh("P", topics.topic("P", "m-1", topics.BATCH)) == "m-1"
    for other in ("P/m/election", "P/a/b/batch", "Q/m/batch", "P//batch", "P/m/batch/x"):
        assert topics.batch_mesh("P", other) is None, other
    assert (topics.ONLINE, topics.OFFLINE) == (b"online", b"offline")
