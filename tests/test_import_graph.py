"""No import cycles among the package's modules, lazy (function-level) imports included.

Why: a cycle through lazy imports works until someone hoists an import to the top, and it
hides which module owns a concept (``cli/calibrate`` and ``cli/textdiff`` once borrowed each
other's private helpers). The graph is read from the source with ``ast``; importing a
submodule is an edge to that submodule, not to the packages above it.
"""
import ast
from pathlib import Path

import napari_textdiff

PKG = Path(napari_textdiff.__file__).parent
NAME = "napari_textdiff"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _edges(mod: str, path: Path, modules) -> set[str]:
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            root = ".".join(base[:len(base) - node.level + 1] if node.level else [])
            src = ".".join(x for x in (root, node.module or "") if x) if node.level \
                else node.module or ""
            targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src
                       for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] == NAME and t in modules and t != mod}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    modules = _modules()
    graph = {m: _edges(m, p, modules) for m, p in modules.items()}
    assert "napari_textdiff.core.textdiff.train" in graph["napari_textdiff.core.textdiff.model"]
    assert "napari_textdiff.core.datasets.busi" in graph["napari_textdiff.core.datasets"]


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _edges(m, p, modules) for m, p in modules.items()}
    assert _cycles(graph) == []
