"""No import cycles inside jmtl/ (the project's standards): every module is parsed with ``ast``
(nothing is imported), the graph of jmtl-internal imports is built from *every* import statement
(module level, inside functions, under ``if``), and each strongly connected component with more
than one module is reported with the import lines that close it.

Edges go to the module an import names: ``from jmtl.models import crf`` -> ``jmtl.models.crf``
(a module), ``from jmtl.weighting import get`` -> ``jmtl.weighting`` (the package's
``__init__``). Executing a submodule also runs its parents' ``__init__``; those implicit edges are
not added (a package ``__init__`` importing its own submodules is the normal layout, not a cycle).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "jmtl"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root / package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules`` (``None`` if outside them)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_edges(modules: dict[str, Path], package: str) -> dict[str, dict[str, int]]:
    """``{importer: {imported: line of the first such import}}`` over internal imports."""
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):  # every statement: module level and inside functions / classes
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package, up level - 1 packages
                    base = mod.split(".") if is_package else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from pkg import name`: name is a submodule or an attribute of pkg's __init__.
                targets = [f"{prefix}.{a.name}" for a in node.names if a.name != "*"] or [prefix]
            for t in targets:
                if not (t == package or t.startswith(package + ".")):
                    continue
                dest = _resolve(t, modules)
                if dest is not None and dest != mod:
                    edges[mod].setdefault(dest, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """Strongly connected components with more than one module (Tarjan): ``(members, cycle)``
    with the members sorted and one shortest closed cycle through the first of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth <= number of modules (~100)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)

    out = []
    for comp in comps:
        members = set(comp)
        start = comp[0]
        # Breadth-first search inside the component for the shortest path start -> ... -> start.
        parent: dict[str, str] = {}
        frontier, seen, found = [start], {start}, None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        parent[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(parent[path[-1]])
        out.append((comp, list(reversed(path)) + [start]))
    return sorted(out)


def describe(found: tuple[list[str], list[str]], edges, modules: dict[str, Path], root: Path) -> str:
    members, cycle = found
    hops = [f"  {a} ({modules[a].relative_to(root)}:{edges[a][b]}) imports {b}" for a, b in zip(cycle, cycle[1:])]
    return f"cycle among {', '.join(members)}; e.g. " + " -> ".join(cycle) + "\n" + "\n".join(hops)


def test_no_import_cycles_in_jmtl():
    modules = module_files(ROOT, PACKAGE)
    assert len(modules) > 20 and "jmtl.models.base" in modules  # the walk found the package
    edges = import_edges(modules, PACKAGE)
    assert any(edges.values())  # it found internal imports at all
    found = cycles(edges)
    assert not found, "import cycles inside jmtl/ (break them; see the standards):\n" + "\n".join(
        describe(c, edges, modules, ROOT) for c in found
    )


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def test_detector_finds_function_level_and_relative_cycles(tmp_path):
    """The detector on a synthetic package with known cycles: one closed by an import inside a
    function, one by a relative import through a package ``__init__``; an acyclic chain and a
    package importing its own submodule are not reported."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import leaf\n",
            "pkg/leaf.py": "import os\n",
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "def f():\n    from pkg.c import g\n    return g\n",
            "pkg/c.py": "import pkg.a\ndef g():\n    pass\n",
            "pkg/sub/__init__.py": "from .x import X\n",
            "pkg/sub/x.py": "X = 1\ndef h():\n    from ..d import D\n",
            "pkg/d.py": "from pkg.sub import X as D\n",
            "pkg/chain1.py": "from pkg import chain2\n",
            "pkg/chain2.py": "from pkg.leaf import os\n",
        },
    )
    modules = module_files(tmp_path, "pkg")
    edges = import_edges(modules, "pkg")
    assert edges["pkg.b"] == {"pkg.c": 2}  # found inside the function body
    assert edges["pkg.sub.x"] == {"pkg.d": 3}  # relative, two levels
    assert edges["pkg.chain2"] == {"pkg.leaf": 1}  # `from pkg.leaf import os`: os is an attribute
    found = cycles(edges)
    assert found == [
        (["pkg.a", "pkg.b", "pkg.c"], ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]),
        (["pkg.d", "pkg.sub", "pkg.sub.x"], ["pkg.d", "pkg.sub", "pkg.sub.x", "pkg.d"]),
    ]
    text = describe(found[0], edges, modules, tmp_path)
    assert "pkg/b.py:2) imports pkg.c" in text
