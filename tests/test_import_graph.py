"""The import graph, read from the source with ``ast``: no cycles, and the layers point one way.

protocol core (agent/core) -> runtimes (agent, firmware) -> gateway; the tools (tools/) and the
test kit (testkit/) stand beside the product and use it, never the other way round; nothing
shipped imports the test suite (tests/), which an installed package does not have.

Every import counts, also one inside a function (a lazy import is still a dependency); only
imports under ``if TYPE_CHECKING:`` do not. The firmware's modules are imported on the board
as ``app.x``, ``hw.x`` and ``cbor``/``mdns``/... (from ``lib``): they get their own namespace
here, ``firmware:<name>``, so they cannot be mistaken for CPython modules of the same name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

CPYTHON_PACKAGES = ("agent", "gateway", "hil", "tools", "testkit")
PRODUCT = ("agent", "gateway", "firmware:")
# Firmware module roots on the board's sys.path: firmware/ (app, hw, boot, main) and its lib.
FIRMWARE_ROOTS = (REPO_ROOT / "firmware", REPO_ROOT / "firmware" / "lib")

# Cycles that other work on the tree removes; each must still exist (then delete it here).
KNOWN_CYCLES: set[frozenset[str]] = set()
# Product modules allowed to use a tool, and why.
PRODUCT_USES_TOOLS = {
    # `meshelect demo` runs ESP32-style nodes: the real firmware, built by the firmware tool.
    ("agent.demo", "tools.firmware"),
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Module name -> file, for the CPython packages and the firmware (``firmware:`` names)."""
    found: dict[str, Path] = {}
    for package in CPYTHON_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path, REPO_ROOT)] = path
    lib = FIRMWARE_ROOTS[1]
    for path in sorted(FIRMWARE_ROOTS[0].rglob("*.py")):
        root = lib if lib in path.parents else FIRMWARE_ROOTS[0]
        found["firmware:" + _module_name(path, root)] = path
    return found


def _imports(tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """(module, names) of every import outside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (item for child in node.orelse for item in _imports_of(child))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST) -> Iterator[tuple[str, list[str]]]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, []
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        yield node.module, [alias.name for alias in node.names]
    else:
        yield from _imports(node)


def _resolve(name: str, table: dict[str, Path], firmware: bool) -> str | None:
    """The module of ours that importing ``name`` loads (the deepest that exists), or None."""
    candidates = ["firmware:" + name, name] if firmware else [name]
    for candidate in candidates:
        while candidate and candidate != "firmware:":
            if candidate in table:
                return candidate
            candidate = candidate.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    table = modules()
    graph: dict[str, set[str]] = {}
    for name, path in table.items():
        firmware = name.startswith("firmware:")
        targets: set[str] = set()
        for module, names in _imports(ast.parse(path.read_text(), str(path))):
            # ``from package import module`` is an edge to that module; a name that is no
            # module of ours is taken from the package (or module) itself.
            for dotted in ["%s.%s" % (module, n) for n in names] or [module]:
                target = _resolve(dotted, table, firmware)
                if target is not None and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_imports_it_should(graph: dict[str, set[str]]) -> None:
    # A lazy import inside a function counts; a TYPE_CHECKING one does not.
    assert "gateway.udp" in graph["gateway.service"]  # imported inside a method
    assert "gateway.service" not in graph["gateway.udp"]  # only under TYPE_CHECKING
    assert "firmware:app.mqtt_transport" in graph["firmware:app.runtime"]  # inside main()
    assert "firmware:app.runtime" not in graph["firmware:app.mqtt_transport"]  # links: no cycle
    assert "firmware:cbor" in graph["firmware:app.config"]  # lib/cbor.py, not cbor2
    assert "agent.core.app" in graph["firmware:app.runtime"]
    assert "agent.core.node" in graph["agent.core.app"]


def test_cycles_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = set(cycles(graph))
    assert found - KNOWN_CYCLES == set(), "import cycles: %s" % sorted(
        sorted(c) for c in found - KNOWN_CYCLES
    )
    assert KNOWN_CYCLES - found == set(), "gone, remove from KNOWN_CYCLES: %s" % sorted(
        sorted(c) for c in KNOWN_CYCLES - found
    )


def test_nothing_shipped_imports_the_test_suite(graph: dict[str, set[str]]) -> None:
    table = modules()
    offenders = []
    for name, path in sorted(table.items()):
        for module, _names in _imports(ast.parse(path.read_text(), str(path))):
            if module == "tests" or module.startswith("tests."):
                offenders.append("%s imports %s" % (name, module))
    assert offenders == []


def test_the_product_uses_neither_the_test_kit_nor_the_tools(graph: dict[str, set[str]]) -> None:
    offenders = sorted(
        (name, target)
        for name, targets in graph.items()
        if name.startswith(PRODUCT)
        for target in targets
        if target.split(".")[0] in ("testkit", "tools", "hil")
    )
    assert set(offenders) == PRODUCT_USES_TOOLS


def test_the_gateway_knows_only_the_protocol_core_of_the_agent(
    graph: dict[str, set[str]],
) -> None:
    # ... and agent.strict_cbor, the CBOR functions every CPython user of the core passes to
    # wire.Codec (the core itself imports no CBOR implementation).
    used = {
        target
        for name, targets in graph.items()
        if name.startswith("gateway")
        for target in targets
        if target.startswith("agent")
    }
    assert used and all(
        target.startswith("agent.core") or target == "agent.strict_cbor" for target in used
    ), sorted(used)
