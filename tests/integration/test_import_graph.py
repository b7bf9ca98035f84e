"""The import graph of harness/ and leaderboard/, from every module's AST (imports inside functions
included, ``if TYPE_CHECKING:`` blocks left out): no cycle between modules, and between packages only
the edges of :data:`ALLOWED` (docs/architecture.md), so dependencies point one way:
cli -> review -> runner -> sandbox -> stages -> science (bounds, certifiers, diagnostics, compute) ->
record, models -> submission -> data -> core. A failure names the offending import, file and line."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.spec import REPO

SCIENCE = {"harness.bounds", "harness.certifiers", "harness.diagnostics", "harness.compute"}
BASE = {"harness.record", "harness.models", "harness.submission", "harness.data", "harness.core"}

#: package -> the packages its modules may import (besides itself, the ``harness`` root and the registries)
ALLOWED: dict[str, set[str]] = {
    "harness.core": set(),
    "harness.data": {"harness.core"},
    "harness.submission": {"harness.data", "harness.core"},
    "harness.models": {"harness.submission", "harness.data", "harness.core"},
    "harness.record": {"harness.submission", "harness.data", "harness.core"},
    "harness.bounds": {"harness.core"},
    "harness.compute": {"harness.record", "harness.data", "harness.core"},
    "harness.certifiers": {"harness.bounds", *BASE},
    "harness.diagnostics": {"harness.bounds", *BASE},
    "harness.stages": SCIENCE | BASE,
    "harness.sandbox": {"harness.stages"} | SCIENCE | BASE,
    "harness.runner": {"harness.sandbox", "harness.stages"} | SCIENCE | BASE,
    "harness.review": {"harness.runner", "harness.sandbox", "harness.stages", "leaderboard"} | SCIENCE | BASE,
    "harness.cli": {"harness.review", "harness.runner", "harness.sandbox", "harness.stages", "leaderboard"}
    | SCIENCE | BASE,
    "harness.__main__": {"harness.cli"},
    # the board reads records and compute, never the runner, the sandbox or a model
    "leaderboard": {"harness.record", "harness.compute", "harness.submission", "harness.data", "harness.core"},
}
#: registries: the one list of their kind, torch-free data that any package may read; they themselves
#: import only harness.core (and their own package's base module)
REGISTRIES = {"harness.certifiers.registry", "harness.stages.registry", "harness.data.registry"}
#: single module edges allowed across the table, each with its reason
EXCEPTIONS = {
    # the RobustBench importer (a maintainer's tool, not the board build) builds zoo entries to count
    # their FLOPs; robustbench imports `autoattack`, whose alias to pyautoattack has one owner
    ("leaderboard.importers.robustbench", "harness.models.compat"),
}


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for top in ("harness", "leaderboard"):
        for p in sorted((root / top).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for x in n.body:
                skip |= {id(y) for y in ast.walk(x)}
    return skip


def imports(root: Path) -> dict[str, list[tuple[str, int]]]:
    """module -> [(imported module, line)]: each import resolved to the deepest module of the project it
    names (``from harness.x import y`` is harness.x.y when that is a module, else harness.x)."""
    mods = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, list[tuple[str, int]]] = {}
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        skip = _type_checking_nodes(tree)
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        found: list[tuple[str, int]] = []
        for n in ast.walk(tree):
            if id(n) in skip:
                continue
            names: list[str] = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
            for t in names:
                if t.split(".")[0] in ("harness", "leaderboard") and (r := resolve(t)) and r != m:
                    found.append((r, n.lineno))
        edges[m] = found
    return edges


def package(m: str) -> str:
    parts = m.split(".")
    return parts[0] if parts[0] == "leaderboard" or len(parts) == 1 else ".".join(parts[:2])


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative;
    written here rather than adding a graph library to the test dependencies for one walk)."""
    graph = {m: sorted({t for t, _ in e}) for m, e in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def forbidden(edges: dict[str, list[tuple[str, int]]], root: Path) -> list[str]:
    bad = []
    for m, found in sorted(edges.items()):
        a = package(m)
        for t, line in found:
            b = package(t)
            if a == b or t == "harness" or (m, t) in EXCEPTIONS:
                continue
            if m in REGISTRIES:
                if b != "harness.core":
                    bad.append(f"{m} (line {line}) imports {t}: a registry imports only harness.core")
                continue
            if t in REGISTRIES:
                continue
            if b not in ALLOWED.get(a, set()):
                bad.append(f"{modules(root)[m].relative_to(root)}:{line}: {m} imports {t} ({a} -> {b} is not "
                           "an allowed edge)")
    return bad


def test_no_import_cycle_between_modules():
    found = cycles(imports(REPO))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_only_allowed_edges_between_packages():
    mods = modules(REPO)
    assert {package(m) for m in mods} - {"harness"} <= set(ALLOWED), "a package missing from ALLOWED"
    assert REGISTRIES <= set(mods)
    bad = forbidden(imports(REPO), REPO)
    assert not bad, "\n".join(bad)


@pytest.fixture
def toy_tree(tmp_path):
    def write(rel: str, text: str) -> None:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    for pkg in ("harness", "harness/core", "harness/runner", "harness/sandbox", "leaderboard"):
        write(f"{pkg}/__init__.py", "")
    write("harness/sandbox/worker.py", "def f():\n    from harness.runner import evaluate\n")  # lazy, upward
    write("harness/runner/evaluate.py", "from harness.sandbox import worker\n")
    write("harness/core/errors.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                     "    from harness.runner import evaluate\n")  # type-only: not an edge
    write("leaderboard/build.py", "import harness.runner.evaluate\n")
    return tmp_path


def test_the_checks_find_a_lazy_cycle_and_forbidden_edges(toy_tree):
    edges = imports(toy_tree)
    assert edges["harness.core.errors"] == []
    assert cycles(edges) == [["harness.runner.evaluate", "harness.sandbox.worker"]]
    bad = forbidden(edges, toy_tree)
    assert len(bad) == 2
    assert any(b.startswith("harness/sandbox/worker.py:2: harness.sandbox.worker imports harness.runner.evaluate")
               for b in bad)
    assert any("leaderboard -> harness.runner" in b for b in bad)
