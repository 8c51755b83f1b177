"""The package reads in pipeline order: no import cycle between modules of different stages.

Every ``import`` of every module of ``minicomp`` (those inside functions too: a lazy import is
still a dependency a reader has to follow) makes an edge of a directed graph of modules. A
cycle inside one folder can be fine (two halves of one stage), but a cycle that crosses
folders means a stage reaches back into one that should come before it, and the folders
stop reading in order. The package's ``__init__`` is left out: it is the public surface,
which imports every stage by design (and a module reading ``minicomp.__version__`` is not a
dependency on those).
"""

import ast
from pathlib import Path

import networkx as nx

import minicomp

PACKAGE = Path(minicomp.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The minicomp modules ``path`` imports, anywhere in the file."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {here}


def import_graph() -> nx.DiGraph:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    graph = nx.DiGraph()
    for path in paths:
        if path == PACKAGE / "__init__.py":
            continue
        for target in imported_modules(path, known):
            graph.add_edge(module_name(path), target)
    return graph


def folder(module: str) -> str:
    """The stage a module belongs to: its first-level folder (or the module itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_import_graph_sees_lazy_imports():
    graph = import_graph()
    assert graph.has_edge("minicomp.lower.program", "minicomp.lower.fused")  # an import inside a function


def test_no_import_cycle_crosses_stage_folders():
    graph = import_graph()
    crossing = []
    for component in nx.strongly_connected_components(graph):
        folders = {folder(m) for m in component}
        if len(folders) > 1:
            cycle = nx.find_cycle(graph.subgraph(component))
            crossing.append(" -> ".join(a for a, _ in cycle) + f" -> {cycle[-1][1]}"
                            f"  (one cycle of {len(component)} modules: {', '.join(sorted(component))})")
    assert not crossing, "import cycles across stages:\n" + "\n".join(crossing)
