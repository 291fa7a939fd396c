"""The package layering, checked on the source tree (pure: no services, a few seconds).

* The shared core (``minutecast``) depends on none of the components: importing every module of
  ``minutecast/`` in a fresh interpreter loads nothing of ``infra``, ``ops``, ``producers``, ``streams``,
  ``training``, ``web`` or ``benchmarks``, and no module there names one of them in an import statement, at
  module level or inside a function (where the first check cannot see it). The ``minutecast`` command reaches
  the components through :data:`minutecast.cli.SUBCOMMANDS`' module names only.
* The project's own modules import each other without cycles: the graph of module-level imports (those that
  run when a module is imported: not inside functions, not under ``if TYPE_CHECKING:``), where ``from x
  import y`` is an edge to ``x.y`` when that is a module and to ``x`` otherwise, is acyclic.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = "minutecast"
COMPONENTS = ("infra", "ops", "producers", "streams", "training", "web", "benchmarks")
PACKAGES = (CORE, *COMPONENTS)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module (or package) it imports
    line: int
    top_level: bool  # runs when ``module`` is imported


def module_files(package: str) -> dict[str, Path]:
    """Dotted name -> file of every Python module of ``package`` (``web/node_modules`` is no Python)."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO)
        if "node_modules" in rel.parts or not all(p.isidentifier() for p in rel.with_suffix("").parts):
            continue
        parts = rel.with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def all_modules() -> dict[str, Path]:
    return {name: path for p in PACKAGES for name, path in module_files(p).items()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(nodes: list[ast.stmt], top_level: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``nodes``, with whether it runs at import time."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, top_level
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _walk(node.body, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.body, False)
            yield from _walk(node.orelse, top_level)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    blocks = [c for c in children if isinstance(c, ast.stmt)]
                    for c in children:  # except handlers and match cases hold statements of their own
                        if isinstance(c, ast.ExceptHandler | ast.match_case):
                            blocks.extend(c.body)
                    yield from _walk(blocks, top_level)
    # Imports inside lambdas or comprehensions do not exist (statements only), so nothing else can hide one.


def imports(module: str, path: Path, known: set[str]) -> list[Import]:
    """The imports of ``module`` as edges to modules: ``from x import y`` is ``x.y`` when that is a module of
    ``known``, else ``x``; relative imports are resolved; ``import a.b`` is ``a.b``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node, top in _walk(tree.body, True):
        if isinstance(node, ast.Import):
            out += [Import(module, alias.name, node.lineno, top) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append(Import(module, sub if sub in known else base, node.lineno, top))
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


# ---- the shared core depends on no component ---------------------------------------------------------------
def test_importing_every_core_module_loads_no_component() -> None:
    core = sorted(module_files(CORE))
    code = (f"import sys, json\nimport {', '.join(core)}\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(COMPONENTS)!r})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert not loaded, f"importing {CORE} (all {len(core)} modules) loads components: {loaded}"


def test_no_core_module_imports_a_component_even_inside_a_function() -> None:
    known = set(all_modules())
    bad = [f"{i.module} ({module_files(CORE)[i.module].relative_to(REPO)}:{i.line}) imports {i.target}"
           f"{'' if i.top_level else ' inside a function'}"
           for name, path in module_files(CORE).items() for i in imports(name, path, known)
           if _top(i.target) in COMPONENTS]
    assert not bad, "the shared core must not depend on a component:\n" + "\n".join(bad)


# ---- no import cycles ---------------------------------------------------------------------------------------
def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Module -> the project modules it imports at module level; (from, to) -> a line of that import."""
    modules = all_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for name, path in modules.items():
        for i in imports(name, path, known):
            if i.top_level and i.target in known and i.target != name:
                graph[name].add(i.target)
                lines.setdefault((name, i.target), i.line)
    return graph, lines


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), those of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module (breadth-first: a shortest one)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def test_the_graph_finds_a_cycle_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["e", "e2"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert a_cycle(graph, ["e", "e2"]) == ["e", "e2", "e"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_projects_modules() -> None:
    graph, lines = import_graph()
    assert len(graph) > 50 and graph[f"{CORE}.cli"], "the graph is built"
    cycles = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        steps = " -> ".join(f"{a} (line {lines[(a, b)]})" for a, b in zip(cycle, cycle[1:], strict=False))
        cycles.append(f"{len(component)} modules {component}; e.g. {steps} -> {cycle[-1]}")
    assert not cycles, "import cycles (module-level imports):\n" + "\n".join(cycles)
