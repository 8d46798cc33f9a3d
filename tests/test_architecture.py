"""The package's shape, checked: no import cycle, the layering rules, file and function sizes.

Every ``import`` in ``edgedyn/`` counts, a deferred one inside a function included: a cycle
hidden behind a lazy import is still a cycle to a reader."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgedyn"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES, each with its reason (also in docs/design.md).
LONG_FUNCTIONS: dict[str, str] = {}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The edgedyn modules ``name`` imports (resolved to the deepest known module)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("edgedyn"):
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {m: _imports(m, p, known) for m, p in mods.items()}
    # importing a package runs its __init__, which is not a dependency of its own modules
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def _layer_violations(src: str, banned: str) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in _graph().items() if m.startswith(src)
                  for d in deps if d.startswith(banned))


def test_runtime_imports_nothing_from_deploy():
    assert _layer_violations("edgedyn.runtime", "edgedyn.deploy") == []


def test_backends_import_nothing_from_profile():
    assert _layer_violations("edgedyn.backends", "edgedyn.profile") == []


def test_no_file_over_the_limit():
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def _functions() -> dict[str, int]:
    out = {}
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # the body, decorators and signature included
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                out[f"{_module(path)}:{node.name}@{node.lineno}"] = node.end_lineno - first + 1
    return out


def test_no_function_over_the_limit():
    long = {k: n for k, n in _functions().items() if n > MAX_FUNCTION_LINES
            and k.split("@")[0] not in LONG_FUNCTIONS}
    assert long == {}


def test_every_listed_exception_is_still_long_and_documented():
    design = (PKG.parent / "docs" / "design.md").read_text()
    sizes = {k.split("@")[0]: n for k, n in _functions().items()}
    for name in LONG_FUNCTIONS:
        assert sizes.get(name, 0) > MAX_FUNCTION_LINES, f"{name} is short now: drop it from LONG_FUNCTIONS"
        assert name.split(":")[1] in design, f"{name}: its reason is missing from docs/design.md"


def _package(module: str) -> str:
    """``edgedyn.X`` for a module of subpackage X, the module itself at the top level."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for m, deps in _graph().items():
        graph.setdefault(_package(m), set()).update(_package(d) for d in deps if _package(d) != _package(m))
    assert _cycles(graph) == []
