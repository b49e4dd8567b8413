"""Layering inside merging/: no two modules import each other, not even through imports inside functions (issue 12:
engine and preflight did, hiding the cycle). An AST scan, so imports that run only on some path count too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

MERGING = Path(__file__).resolve().parents[1] / "merging"


def module_name(path: Path) -> str:
    parts = path.relative_to(MERGING.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """merging.* modules `path` imports anywhere (top level or inside functions); `from pkg import mod` counts mod."""
    found = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = sorted(MERGING.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, known) for f in files}


def test_every_merging_module_imports():
    for name in import_graph():
        if not name.endswith("__main__"):  # runs the command line when imported
            importlib.import_module(name)


def test_the_scan_sees_imports_inside_functions():
    graph = import_graph()
    assert "merging.methods.registry" in graph["merging.checks"]
    assert "merging.plan" in graph["merging.preflight"]
    assert "merging.recipe_text" in graph["merging.recipe"]


def test_no_two_merging_modules_import_each_other():
    graph = import_graph()
    mutual = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph.get(b, ())})
    assert not mutual, f"modules importing each other: {mutual}"
