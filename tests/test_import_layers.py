"""The experiment scripts and the benchmarks import in one direction (issue 22 §3): ``experiments/bench``
may import the scripts' shared modules (``experiments.results_io``, ``experiments.timing``, configs),
no ``experiments/*.py`` imports ``experiments.bench``, and no module of either imports itself back
through others (the imports are read with ``ast``, the ones inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports (``from experiments import x`` names
    ``experiments.x`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "experiments").glob("*.py")) + sorted((ROOT / "experiments" / "bench").glob("*.py"))
    known = {_module_name(f): f for f in files}
    return {name: _imports(f, set(known)) - {name} for name, f in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_experiments_and_bench_form_no_import_cycle():
    graph = import_graph()
    assert "experiments.results_io" in graph and "experiments.bench.common" in graph  # the walk sees both
    assert "experiments.results_io" in graph["experiments.bench.common"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    scripts = [m for m in graph if not m.startswith("experiments.bench")]
    into_bench = {m: sorted(d for d in graph[m] if d.startswith("experiments.bench")) for m in scripts}
    assert not {m: d for m, d in into_bench.items() if d}, (
        "experiment scripts import experiments.bench; move what they use into experiments.results_io / experiments.timing"
    )
