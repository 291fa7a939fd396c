"""The package layering and function sizes, checked on the source tree (pure: no services, a few seconds).

* The "may import" column of docs/architecture.md#code-layout is stated as import-linter contracts
  (``[tool.importlinter]`` in pyproject.toml); ``lint-imports`` must keep them all, and the table and the contracts
  must say the same, so neither can drift from the other. The contracts also forbid import cycles among the modules
  of each package; no two packages import each other either.
* The shared core (``minutecast``) loads no component at run time either: importing every module of
  ``minutecast/`` in a fresh interpreter loads nothing of the other packages.
* No function or method outside tests/ is over 80 lines (counted from its ``def`` to its last line): entry points
  are wiring over named steps.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
V_BIN = Path(sys.executable).parent
CORE = "minutecast"
MAX_FUNCTION_LINES = 80


def importlinter_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


PACKAGES: tuple[str, ...] = tuple(importlinter_config()["root_packages"])


# ---- the contracts hold ----------------------------------------------------------------------------------------
def test_lint_imports_keeps_every_contract() -> None:
    res = subprocess.run([str(V_BIN / "lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"lint-imports: a layering contract is broken (see pyproject.toml):\n{out[-6000:]}"
    contracts = importlinter_config()["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in out, out[-3000:]


# ---- the README table and the contracts agree ------------------------------------------------------------------
def layout_table() -> dict[str, str]:
    """docs/architecture.md's Code layout table: package -> its "may import" cell."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)/`", cells[0]) if len(cells) == 3 else None
        if m:
            rows[m.group(1)] = cells[2]
    return rows


def table_may_import(cell: str, package: str) -> set[str]:
    """The packages a "may import" cell allows (beside the package itself)."""
    if cell.startswith("everything"):
        return set(PACKAGES) - {package}
    if cell.startswith("only itself"):
        return set()
    return {name for name in re.findall(r"`(\w+)`", cell) if name in PACKAGES} - {package}


def contracts_may_import() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """From pyproject.toml: package -> what its forbidden contract leaves it (every package without one may import
    everything), and package -> the allowed packages a further contract narrows to some modules only."""
    allowed = {p: set(PACKAGES) - {p} for p in PACKAGES}
    narrowed: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for c in importlinter_config()["contracts"]:
        if c["type"] != "forbidden":
            continue
        [source] = c["source_modules"]
        forbidden = set(c["forbidden_modules"])
        assert source in PACKAGES and forbidden <= set(PACKAGES), f"contract {c['id']} is about whole packages"
        if forbidden & allowed[source] == forbidden and c.get("ignore_imports"):
            narrowed[source] |= forbidden  # allowed, but only where ignore_imports says
        else:
            allowed[source] -= forbidden
    return allowed, narrowed


def test_the_layout_table_and_the_import_contracts_agree() -> None:
    table = layout_table()
    assert set(table) == set(PACKAGES), f"table rows {sorted(table)} vs root_packages {sorted(PACKAGES)}"
    allowed, narrowed = contracts_may_import()
    differ = [f"{p}/: table says {sorted(table_may_import(table[p], p))}, contracts say {sorted(allowed[p])}"
              for p in PACKAGES if table_may_import(table[p], p) != allowed[p]]
    assert not differ, "docs/architecture.md's may-import column and pyproject.toml disagree:\n" + "\n".join(differ)
    for package, targets in narrowed.items():
        for target in targets:  # e.g. "`infra` (jar paths, in the entry point only)"
            assert re.search(rf"`{target}` \([^)]*\bonly\)", table[package]), \
                f"a contract lets {package}/ import {target} in some modules only: the table must say so"


def test_no_two_packages_import_each_other() -> None:
    """acyclic_siblings checks inside each package; across them only ops, web and benchmarks could close a loop."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    both_ways = [(a, b) for a, b in itertools.combinations(PACKAGES, 2)
                 if graph.chain_exists(importer=a, imported=b, as_packages=True)
                 and graph.chain_exists(importer=b, imported=a, as_packages=True)]
    assert not both_ways, f"packages importing each other (an import cycle across packages): {both_ways}"


# ---- the shared core loads no component at run time -------------------------------------------------------------
def test_importing_every_core_module_loads_no_component() -> None:
    core = sorted(graph_modules := grimp.build_graph(CORE, cache_dir=None).modules)
    assert len(graph_modules) > 10
    components = [p for p in PACKAGES if p != CORE]
    code = (f"import sys, json\nimport {', '.join(core)}\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {components!r})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert not loaded, f"importing {CORE} (all {len(core)} modules) loads components: {loaded}"


# ---- short functions ------------------------------------------------------------------------------------------
def product_files() -> list[Path]:
    """Every Python file of the product: all but tests/, build output, virtual environments, hidden folders and
    vendored node modules."""
    skip = {"tests", "node_modules", "build", "dist", "venv"}
    return sorted(p for p in REPO.rglob("*.py")
                  if not any(part in skip or part.startswith(".") for part in p.relative_to(REPO).parent.parts))


def long_functions(source: str, filename: str) -> list[tuple[str, int, int]]:
    """(qualified name, def line, lines from ``def`` to its last line) of each function over the limit."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        out.append((name, child.lineno, length))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source, filename), "")
    return out


def _function(name: str, body_lines: int, indent: str = "", decorator: bool = False) -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}@decorator\n" * decorator + f"{indent}def {name}():\n{body}"


def test_the_length_check_sees_methods_nested_functions_and_counts_from_def() -> None:
    n = MAX_FUNCTION_LINES
    source = (_function("at_limit", n - 1, decorator=True)  # 80 lines from def: allowed, decorator not counted
              + "class C:\n" + _function("method", n, "    ")
              + "def outer():\n" + _function("inner", n, "    ") + "    return inner\n")
    found = {name: length for name, _, length in long_functions(source, "<case>")}
    assert found == {"C.method": n + 1, "outer": n + 3, "outer.inner": n + 1}, found


def test_no_function_outside_tests_is_over_80_lines() -> None:
    files = product_files()
    assert len(files) > 50, "the product's files are found"
    long = [f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
            for path in files for name, line, length in long_functions(path.read_text(), str(path))]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)
