"""The import graph of the four packages, read with ``ast`` (nothing is imported): imports only point
down the layers, and no module imports itself back through others.

    lab ──> gateway ──> router        variants (torch side) stands alone
      └───────────────────^

Every import counts for the layers, those inside functions included: a lazy import is still a
dependency. Cycles are looked for among the imports that run when a module is imported (a registry
that imports its plugins lazily, as ``router.policy`` does, is not a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "router": set(),  # the pure routing library
    "gateway": {"router"},  # serving: llm-gateway serve
    "lab": {"gateway", "router"},  # offline work; runs variants only as a subprocess
    "variants": set(),  # the torch side, run by the backend environment
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in ALLOWED for p in sorted((ROOT / pkg).rglob("*.py"))}


def _import_time(tree: ast.Module) -> set[ast.AST]:
    """The import statements that run when the module is imported: not in a function, not under
    ``if TYPE_CHECKING:``."""
    found: set[ast.AST] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.add(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo += list(ast.iter_child_nodes(node))
    return found


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[int, str, bool]]:
    """(line, imported module, runs at import time) for every import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    eager = _import_time(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, node in eager
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base, node in eager


def _graph() -> dict[str, list[tuple[int, str, bool]]]:
    modules = _modules()
    known = set(modules)
    return {
        name: [edge for edge in _imports(name, path, known) if edge[1].split(".")[0] in ALLOWED]
        for name, path in modules.items()
    }


def test_the_packages_are_found() -> None:
    names = set(_modules())
    assert {"gateway.cli", "router.training", "lab.profiles", "variants.healer"} <= names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_only_down_the_layers(package: str) -> None:
    bad = [
        f"{name} (line {line}) imports {target}"
        for name, edges in _graph().items()
        if name.split(".")[0] == package
        for line, target, _ in edges
        if target.split(".")[0] not in {package} | ALLOWED[package]
    ]
    assert not bad, f"{package} may import only {sorted(ALLOWED[package]) or 'itself'}:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    known = set(_modules())
    graph = {
        name: sorted({t for _, t, eager in edges if eager and t in known and t != name})
        for name, edges in _graph().items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("import os\nfrom lab import profiles\n\ndef f():\n    from gateway.cli import main\n")
    got = [(t, eager) for _, t, eager in _imports("router.x", source, {"lab.profiles"})]
    assert got == [("os", True), ("lab.profiles", True), ("gateway.cli", False)]
