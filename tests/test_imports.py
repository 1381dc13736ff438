"""No import cycles in ``probe/``: the import graph of every module, read from the source (imports inside
functions included, relative imports resolved), has no cycle.

A cycle is two modules that each need the other, however late one of them imports: it means a function lives in
the wrong module. The test prints every cycle with the lines that close it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "probe"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    """The absolute name a ``from ... import`` statement of ``module`` takes its names from."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def import_edges(root: Path = ROOT) -> dict[str, dict[str, list[int]]]:
    """module -> {imported module of the package -> the lines that import it}, every import statement counted
    (top level, inside functions, under ``if``/``try``)."""
    modules = _modules(root)
    edges: dict[str, dict[str, list[int]]] = {m: {} for m in modules}

    def add(src: str, target: str, line: int) -> None:
        # the longest known module the name starts with (``probe.x.y`` where y is a function of probe.x)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != src and line not in edges[src].get(target, []):
            edges[src].setdefault(target, []).append(line)

    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == root.name:
                        add(name, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, node, modules)
                if base.split(".")[0] != root.name:
                    continue
                for alias in node.names:  # ``from . import _x`` imports the module _x
                    sub = f"{base}.{alias.name}"
                    add(name, sub if sub in modules else base, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(component: list[str], edges) -> str:
    inside = set(component)
    lines = [f"cycle among {', '.join(component)}:"]
    for src in component:
        for dst, at in sorted(edges[src].items()):
            if dst in inside:
                lines.append(f"  {src} -> {dst} (line{'s' if len(at) > 1 else ''} {', '.join(map(str, at))})")
    return "\n".join(lines)


def test_the_walker_sees_relative_late_and_cyclic_imports(tmp_path):
    pkg = tmp_path / "probe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    from ..a import x\n")
    (pkg / "d.py").write_text("from probe.sub import c\nfrom .a import x\n")
    edges = import_edges(pkg)
    assert edges["probe.a"] == {"probe.b": [1]}
    assert edges["probe.b"] == {"probe.sub.c": [2]}
    assert edges["probe.sub.c"] == {"probe.a": [4]}
    assert edges["probe.d"] == {"probe.sub.c": [1], "probe.a": [2]}
    assert cycles(edges) == [["probe.a", "probe.b", "probe.sub.c"]]


def test_probe_has_no_import_cycles():
    edges = import_edges()
    assert len(edges) > 50  # the whole package was read
    found = cycles(edges)
    if found:
        pytest.fail(f"{len(found)} import cycle(s) in probe/ (move the function to the module that owns it):\n"
                    + "\n".join(_describe(c, edges) for c in found))
