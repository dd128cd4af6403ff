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




FACES = ("interp", "interp.curvature", "interp.inverses", "interp.viz")  # what code outside interp imports from


def _interp_imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import of ``interp`` in ``path`` (``import interp.x`` gives no names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "interp"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "interp":
            found.append((node.module, [a.name for a in node.names]))
    return found


def test_study_benchmarks_and_examples_import_interp_through_its_faces_only():
    import importlib

    wrong = []
    for top in ("study", "benchmarks", "examples"):
        for path in (ROOT / top).rglob("*.py"):
            for module, names in _interp_imports(path):
                if module not in FACES:
                    wrong.append((str(path.relative_to(ROOT)), module))
                    continue
                exported = set(importlib.import_module(module).__all__)
                submodules = {"curvature", "inverses", "viz"} if module == "interp" else set()
                wrong += [(str(path.relative_to(ROOT)), f"{module}.{n}") for n in names if n not in exported | submodules]
    assert not wrong, wrong


def test_each_face_exports_what_it_names():
    import importlib

    for face in FACES:
        module = importlib.import_module(face)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, (face, missing)


def test_no_file_in_study_or_interp_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for top in ("study", "interp") for p in (ROOT / top).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}  # fmt: skip
    assert not long, long


def test_the_tests_mirror_the_package_tree():
    """tests/<package>/<room>/test_x.py only where <package>/<room> is a folder of the project (a package, or
    examples/), and a package's every room has its tests' folder."""
    stray = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
             if len(p.relative_to(ROOT / "tests").parts) > 1
             and not (ROOT / Path(*p.relative_to(ROOT / "tests").parts[:-1])).is_dir()]  # fmt: skip
    rooms = [p.parent.relative_to(ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")
             if p.parent != ROOT / pkg]  # fmt: skip
    untested = [str(r) for r in rooms if not (ROOT / "tests" / r).is_dir()]
    assert not stray, stray
    assert not untested, untested


def test_the_peers_of_the_bench_extra_are_imported_by_benchmarks_only():
    """dattri and kronfluence are compared with side by side (``benchmarks/peer_parity.py``), never used by the package."""
    import re

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    peers = {re.split(r"[=<>!~\[ ]", req, maxsplit=1)[0].replace("-", "_") for req in extra}
    assert peers == {"dattri", "kronfluence"}
    used = []
    for top in (*PACKAGES, "examples"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])  # fmt: skip
                used += [(str(path.relative_to(ROOT)), n) for n in names if n.split(".")[0] in peers]
    assert not used, used
