"""The package graph (docs/architecture.md): no import cycle, the layering holds, no private name crosses a
package boundary, and the picture in the docs is the graph the source has."""

from __future__ import annotations

import ast
import importlib.util
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

CORE, SUPPORT = set(import_graph.CORE), set(import_graph.SUPPORT)
# What each lower layer may import (its own package aside); the layers above may import what is below.
MAY_IMPORT = {
    "errors": set(),
    "data": {"errors"},
    "stats": set(),
    "_optional": {"errors"},
    "arch": SUPPORT,
    "models": {"arch"} | SUPPORT,
    "engine": {"models", "arch"} | SUPPORT,
    "cache": {"engine", "models"} | SUPPORT,
    "methods": CORE | SUPPORT,
    "rewards": CORE | SUPPORT | {"methods"},
    "harness": CORE | SUPPORT | {"rewards"},
    "serving": CORE | SUPPORT | {"rewards"},
    "toyworld": CORE | SUPPORT | {"methods", "rewards", "feedback", "alignment", "serving"},
    "feedback": CORE | SUPPORT | {"methods", "rewards"},
    "alignment": CORE | SUPPORT | {"rewards", "feedback"},
    "redteam": CORE | SUPPORT | {"rewards", "toyworld", "alignment"},
    "testing": CORE | SUPPORT,
    "rl": SUPPORT,
}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return exc.args[1]
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "c", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_headvec_packages_or_modules():
    packages = import_graph.package_graph()
    # the graph is read from the source (not empty): a few edges that must be there
    assert {"rewards", "methods", "harness", "serving", "toyworld", "cli"} <= packages.keys()
    assert "methods" in packages["rewards"] and "rewards" in packages["harness"]
    assert find_cycle(packages) is None
    assert find_cycle(import_graph.module_graph()) is None


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_layering(package):
    assert import_graph.package_graph().get(package, set()) - MAY_IMPORT[package] == set()


def test_nothing_imports_the_cli_or_the_demo():
    importers = {a for a, targets in import_graph.package_graph().items() if targets & {"cli", "demo"}}
    assert importers == set()


def test_no_private_name_crosses_a_package_boundary():
    source = import_graph.SRC
    problems = []
    for path in sorted(source.rglob("*.py")):
        package = import_graph.unit(import_graph.module_name(path))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headvec.")):
                continue
            if import_graph.unit(node.module) == package:
                continue
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            if private:
                problems.append(f"{path.relative_to(source)} imports {private} from {node.module}")
    assert problems == []


def test_the_picture_in_the_docs_is_the_import_graph():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert import_graph.mermaid() in text  # regenerate with: python scripts/import_graph.py
    assert import_graph.mermaid_edges(text) == import_graph.picture_edges()
