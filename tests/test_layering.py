"""The package layering holds: cli -> study -> transfer | interp, no arrow back up, no import circles.

Every import is read from the source (module level and inside functions alike), so a lazy import
that would close a circle counts too.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "study", "transfer", "interp")
# which packages each may import (besides itself)
ALLOWED = {"cli": {"study", "transfer", "interp"}, "study": {"transfer", "interp"}, "transfer": set(), "interp": set()}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    for m in graph:  # a package's __init__ is where its name resolves to, not an edge of its own modules
        graph[m] = {d for d in graph[m] if not (d in PACKAGES and m.startswith(d + "."))}
    return graph


def test_no_package_imports_one_above_it():
    wrong = [(m, d) for m, deps in _graph().items() for d in deps
             if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] not in ALLOWED[m.split(".")[0]]]  # fmt: skip
    assert not wrong, wrong


def test_there_is_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                circles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, circles


def test_no_file_in_study_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "study").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}  # fmt: skip
    assert not long, long
