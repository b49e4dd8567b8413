"""Layering: no import cycle among the project's modules (merging, inference, evaluation, ui, zoo, app), not even
through imports inside functions or under TYPE_CHECKING (issue 12: engine and preflight imported each other, hidden
by imports inside functions). An AST scan, so imports that run only on some path count too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("merging", "inference", "evaluation", "ui", "zoo")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> list[Path]:
    return sorted(f for package in PACKAGES for f in (ROOT / package).rglob("*.py")) + [ROOT / "app.py"]


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere. `from pkg import mod` counts pkg.mod (not pkg) when mod is a module,
    as a submodule's `from . import sibling` needs the sibling, not the package's __init__."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            names = submodules if len(submodules) == len(node.names) else [base, *submodules]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = project_files()
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_merging_module_imports():
    for name in import_graph():
        if name.startswith("merging.") and not name.endswith("__main__"):  # __main__ runs the command line
            importlib.import_module(name)


def test_the_scan_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    assert "merging.methods.registry" in graph["merging.checks"]
    assert "merging.plan" in graph["merging.preflight"]
    assert "merging.recipe_text" in graph["merging.recipe"]
    assert {"zoo.classifier", "zoo.lm", "zoo.families"} <= graph["zoo.build"]
    assert "zoo" not in graph["zoo.build"]  # `from . import lm` needs zoo.lm, not the package


def test_the_cycle_finder_finds_long_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_project_modules():
    found = cycles(import_graph())
    assert not found, f"modules that import each other (directly or round a loop): {found}"
