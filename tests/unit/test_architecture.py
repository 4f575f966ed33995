"""The package structure of README "Layout": no import cycles, and dependencies point one way.

The import graph is read from the source with :mod:`ast` (every ``import``
statement, function-level ones included, since a delayed import only hides a
cycle), so these tests need none of the optional dependencies installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("taar", "taar_etl", "taar_web", "taar_dev", "jobs", "dags")
PRODUCTION = ("taar", "taar_etl", "taar_web", "jobs", "dags")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``import name`` loads (the longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import sub" imports the submodule when one exists.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            while target:
                # Importing a.b.c runs a and a.b first, except the packages the importer sits in
                # (those are already being imported when it runs).
                if target != module and not module.startswith(target + "."):
                    targets.add(target)
                target = target.rpartition(".")[0] or None
                target = target if target in MODULES else None
    return targets


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_and_delayed_imports():
    assert "taar.storage.base" in GRAPH["taar.storage.local"]  # "from .base import ..."
    assert "taar.storage" in GRAPH["taar.publishing"]


def test_no_import_cycle_anywhere():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("package", PRODUCTION)
def test_no_production_package_imports_the_development_tools(package):
    offenders = {m: sorted(t for t in targets if t.split(".")[0] == "taar_dev")
                 for m, targets in GRAPH.items() if m.split(".")[0] == package}
    assert {m: t for m, t in offenders.items() if t} == {}


@pytest.mark.parametrize("package,allowed", [
    ("taar", {"taar"}),
    ("taar_web", {"taar", "taar_web"}),
    ("taar_etl", {"taar", "taar_etl"}),
    ("jobs", {"taar", "taar_etl", "jobs"}),
    ("dags", {"dags"}),
])
def test_dependencies_point_one_way(package, allowed):
    outside = {m: sorted(t for t in targets if t.split(".")[0] not in allowed)
               for m, targets in GRAPH.items() if m.split(".")[0] == package}
    assert {m: t for m, t in outside.items() if t} == {}


def test_the_storage_layer_is_a_leaf():
    """taar.storage imports nothing of taar but itself (publishing, which knows the catalogue, sits above it)."""
    above = {m: sorted(t for t in targets if not t.startswith("taar.storage"))
             for m, targets in GRAPH.items() if m.startswith("taar.storage")}
    assert {m: t for m, t in above.items() if t} == {}
