"""The package's shape: module and function sizes, import cycles and layering (issue 17).

Imports are read from the source with ``ast`` (those inside functions included), so a cycle
hidden in a function body counts, and nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ipgkit"

#: lower layers import nothing from these (the pipeline's later stages)
UPPER = ("rollouts", "attribution", "training", "experiments", "evaluation", "saes")
LOWER = ("models", "tasks", "components")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """ipgkit modules ``name`` imports anywhere in its source (resolved to known modules)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("ipgkit"):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle among modules, ignoring edges from a package to its own submodules (its
    ``__init__`` re-exports them) and from a submodule to its package's ``__init__``."""

    def edges(name):
        return [
            target
            for target in graph[name]
            if not target.startswith(name + ".") and not name.startswith(target + ".")
        ]

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name):
        state[name] = 1
        stack.append(name)
        for target in edges(name):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def layer_of(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def test_no_module_over_400_lines():
    big = {
        name: len(path.read_text().splitlines())
        for name, path in modules().items()
        if len(path.read_text().splitlines()) > 400
    }
    assert big == {}


def test_no_function_over_80_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert long == []


def test_no_import_cycle_counting_imports_inside_functions():
    assert first_cycle(import_graph()) is None


def test_the_cycle_finder_sees_an_import_hidden_in_a_function(tmp_path):
    module = tmp_path / "a.py"
    module.write_text("import os\n\n\ndef f():\n    from ipgkit.b import x\n")
    imported = imports_of("ipgkit.a", module, {"ipgkit.a", "ipgkit.b"})
    assert imported == {"ipgkit.b"}
    graph = {"ipgkit.a": imported, "ipgkit.b": {"ipgkit.a"}, "ipgkit.c": set()}
    assert first_cycle(graph) == ["ipgkit.a", "ipgkit.b", "ipgkit.a"]
    assert first_cycle({"ipgkit.a": imported, "ipgkit.b": set()}) is None


@pytest.mark.parametrize("lower", LOWER)
def test_lower_layers_import_nothing_from_the_upper_ones(lower):
    graph = import_graph()
    wrong = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if layer_of(name) == lower
        for target in targets
        if layer_of(target) in UPPER
    )
    assert wrong == []


def test_every_package_re_exports_what_it_did():
    import ipgkit

    assert len(ipgkit.__all__) == len(set(ipgkit.__all__))
    missing = [name for name in ipgkit.__all__ if not hasattr(ipgkit, name)]
    assert missing == []
