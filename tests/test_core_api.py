"""The shared core's public surface: what it imports, and its type stubs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core import datapath, energyreport, node, sleepy, topics

CORE = Path(__file__).resolve().parent.parent / "agent" / "core"

# What a core module may import: the core itself, and modules both interpreters have.
SHARED_MODULES = {"micropython", "hashlib", "json", "sys", "gc", "heapq", "uheapq"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for item in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(item, ast.Import):
            names.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module:
            names.add(item.module)
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
    for kind, who, qos in rows:
        name = topics.topic("P", "<mesh>", kind, "<%s>" % who if who else None)
        assert name == "P/<mesh>/" + kind + ("/<%s>" % who if who else "")
        assert topics.qos(kind) == int(qos), kind
    assert topics.batch_filter("P") == "P/+/batch"
    assert topics.batch_mesh("P", topics.topic("P", "m-1", topics.BATCH)) == "m-1"
    for other in ("P/m/election", "P/a/b/batch", "Q/m/batch", "P//batch", "P/m/batch/x"):
        assert topics.batch_mesh("P", other) is None, other
    assert (topics.ONLINE, topics.OFFLINE) == (b"online", b"offline")


def test_the_settings_table_in_the_design_is_the_code() -> None:
    text = (CORE.parent.parent / "docs" / "design.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)` \| (\d+)\.\.(\d+)\b[^|]*\| (\d+)\b[^|]*\|$", text, re.M)
    assert sorted(name for name, _, _, _ in rows) == sorted(
        ["heartbeat_ms"]
        + ["election." + k for k in ("margin", "quorum", "max_peers")]
        + ["election." + k for k in ("suspect_intervals", "listen_intervals")]
        + ["election." + k for k in ("probes", "probe_ms")]
        + ["score." + k for k in ("battery", "link", "low_battery")]
        + ["sleep." + row[0] for row in sleepy.SETTINGS]
        + ["energy." + row[0] for row in energyreport.SETTINGS]
    )
    # [sleep] and [energy]: their modules' SETTINGS rows (name, default, lowest, highest).
    for name, low, high, default in rows:
        table, _, key = name.rpartition(".")
        if table in ("sleep", "energy"):
            settings = (sleepy if table == "sleep" else energyreport).SETTINGS
            assert (key, int(default), int(low), int(high)) in settings, name
    rows = [row for row in rows if not row[0].startswith(("sleep.", "energy."))]

    def config(name: str, value: int | None) -> node.Config:
        table, _, key = name.rpartition(".")
        given = {} if value is None else {key: value}
        if table:
            return node.make_config(election=given if table == "election" else None,
                                    score=given if table == "score" else None)  # fmt: skip
        return node.make_config(**given)

    def value(cfg: node.Config, name: str) -> int:
        table, _, key = name.rpartition(".")
        return getattr(cfg.weights if table == "score" else cfg, key)

    for name, low, high, default in rows:
        assert value(config(name, None), name) == int(default), name
        for good in (int(low), int(high)):
            assert value(config(name, good), name) == good, name
        for bad in (int(low) - 1, int(high) + 1):
            with pytest.raises(ValueError, match="^%s: " % re.escape(name)):
                config(name, bad)
    assert node.MAX_NODE_ID_BYTES == 16 and datapath.MAX_MESH_BYTES == 32
    assert "| `node_id` | 1..16 UTF-8 bytes |" in text and "| `mesh` | 1..32 UTF-8 bytes |" in text


# The core's modules whose API CPython code uses: each has a stub beside it (agent/core/*.pyi).
# _compat is the core's own shim and __init__ holds nothing.
def _core_modules() -> list[str]:
    return sorted(
        "agent.core." + path.stem
        for path in CORE.glob("*.py")
        if path.stem not in ("__init__", "_compat")
    )


def test_every_core_module_has_a_stub() -> None:
    missing = [name for name in _core_modules() if not (CORE / (name[11:] + ".pyi")).is_file()]
    assert missing == [], "write agent/core/<module>.pyi for %s" % missing


def test_the_stubs_say_what_the_core_has() -> None:
    """mypy's stubtest imports each module and compares it with its stub: every public name,
    each signature and default, the value of every Final constant."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", *_core_modules()],
        cwd=CORE.parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
