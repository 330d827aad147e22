"""The shape of the house, checked: no import cycle between frtrain's modules (counting imports inside functions),
and the evaluation wing in short modules."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "frtrain"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """frtrain module -> the frtrain modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base in modules:
                    edges.add(base)
                edges |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_frtrain_imports_itself_back_through_others():
    graph = import_graph()
    assert "frtrain.evaluation.embed" in graph and graph["frtrain.evaluate"]  # the graph was read
    assert cycles(graph) == []


def test_the_evaluation_modules_are_short():
    long = {p.name: n for p in (PACKAGE / "evaluation").glob("*.py") if (n := len(p.read_text().splitlines())) > 360}
    assert long == {}


def test_the_data_layer_does_not_reach_up_into_evaluation_or_engine():
    graph = import_graph()
    up = {m: sorted(e for e in edges if e.startswith(("frtrain.evaluation", "frtrain.engine")))
          for m, edges in graph.items() if m.startswith(("frtrain.data", "frtrain.heads", "frtrain.backbones"))}
    assert {m: e for m, e in up.items() if e} == {}
