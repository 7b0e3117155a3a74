"""The package's import graph has no cycles, and every module imports on its own.

Every ``import`` statement of every module counts, also those inside functions (a lazy
import that closes a circle is still a circle: it only hides it until the call).  Imports
under ``if TYPE_CHECKING:`` do not run and are left out.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import ftlens

ROOT = Path(ftlens.__file__).parent


def _modules() -> dict[str, Path]:
    out = {"ftlens": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="ftlens."):
        spec = importlib.util.find_spec(info.name)
        out[info.name] = Path(spec.origin)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _from_module(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` statement in ``package`` reads from."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """ftlens modules that ``name`` imports (resolved: ``from . import x`` -> the submodule x)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ftlens")
        elif isinstance(node, ast.ImportFrom):
            mod = _from_module(node, package)
            if mod.split(".")[0] != "ftlens":
                return
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            found.update(subs if subs else [mod])
            if len(subs) < len(node.names):
                found.add(mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard(name)
    return {m for m in found if m in known}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_package_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 20  # the walk found the package's modules
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_import_walk_sees_lazy_imports():
    graph = _graph()
    assert "ftlens.render" in graph["ftlens.cli.commands"]  # imported inside the commands that write pages


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def _private_imports(mods: dict[str, Path] | None = None) -> list[str]:
    """``from ftlens.x import _name`` (or ``from .x import _name``) in one module of another's
    private name: what crosses a module boundary must be public."""
    mods = _modules() if mods is None else mods
    known = set(_modules()) | set(mods)
    bad = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            mod = _from_module(node, package)
            if mod.split(".")[0] != "ftlens":
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{mod}.{alias.name}" not in known:
                    bad.append(f"{name} imports {mod}.{alias.name}")
    return bad


def test_no_module_imports_a_private_name_of_another():
    assert _private_imports() == []


def test_the_private_import_check_sees_one(tmp_path):
    """The check above can fail: it finds the private imports of a throw-away module (a plain and a
    relative one, inside a function), and not its public one."""
    path = tmp_path / "probe.py"
    path.write_text("from .tokens import display_tokens\n\ndef f():\n    from ftlens.tokens import _hidden\n"
                    "    from .result import _secret as s\n")
    assert _private_imports({"ftlens.probe": path}) == ["ftlens.probe imports ftlens.tokens._hidden",
                                                       "ftlens.probe imports ftlens.result._secret"]


def test_results_never_import_views():
    """Results (Trace, StepGraph, the residual analyses, Study) and their builders stay below the
    renderer: no library module outside ftlens.render imports it, lazily or not (issue 20); only
    the command line, the application on top, writes pages."""
    graph = _graph()
    users = sorted(m for m, deps in graph.items() if any(d == "ftlens.render" or d.startswith("ftlens.render.")
                                                           for d in deps) and not m.startswith("ftlens.render"))
    assert users == ["ftlens.cli.commands"]


def test_no_module_is_over_450_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert long == {}


def test_study_stays_out_of_the_evaluation_wing():
    graph = _graph()
    assert not [(m, d) for m, deps in graph.items() if m.startswith("ftlens.study") for d in deps
                if d.startswith("ftlens.eval")]
