"""The import directions of docs/architecture.md ("Layers"), read from the source with ``ast``.

Every import counts, also one inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# first-party package -> the first-party packages it may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "ml": {"ml"},
    "store": {"store"},
    "assets": {"assets", "ml", "store"},
    "orchestration": {"orchestration", "assets", "ml", "store"},
    "service": {"service", "ml", "store"},
    "cli": {"cli", "orchestration", "service", "ml", "store"},
}
FIRST_PARTY = set(ALLOWED)

# third-party frameworks that belong to one layer only
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "ml": {"dagster", "dagster_dbt", "dagster_duckdb", "fastapi", "sqlalchemy", "alembic"},
    "store": {"dagster", "dagster_dbt", "dagster_duckdb", "fastapi", "polars", "torch"},
    "service": {"dagster", "dagster_dbt", "dagster_duckdb"},
}

# inside assets/: the shared modules below the stage modules; a stage module imports none of the
# other stage modules
ASSETS_SHARED = {"assets.resources", "assets.partitions", "assets.catalog", "assets.alerting",
                 "assets.lifecycle"}


def imports_of(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module_parts = path.relative_to(ROOT).with_suffix("").parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(module_parts[:-node.level]) if module_parts[-1] != "__init__" \
                    else list(module_parts[:len(module_parts) - node.level])
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # `from assets import audit` may import the module assets.audit
            for alias in node.names:
                out.append((node.lineno, f"{name}.{alias.name}"))
    return out


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def layer_violations() -> list[str]:
    problems = []
    for package, allowed in ALLOWED.items():
        for path in python_files(package):
            rel = path.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts)
            for line, name in imports_of(path, package):
                top = name.split(".")[0]
                if top in FIRST_PARTY and top not in allowed:
                    problems.append(f"{rel}:{line} imports {name}: {package} may import only "
                                    f"{sorted(allowed)}")
                if top in FORBIDDEN_THIRD_PARTY.get(package, ()):
                    problems.append(f"{rel}:{line} imports {name}: {top} does not belong in "
                                    f"{package}")
                if package == "assets" and top == "assets" and "." in name \
                        and module != "assets.__init__":
                    target = ".".join(name.split(".")[:2])
                    if target not in ASSETS_SHARED and target != module:
                        problems.append(f"{rel}:{line} imports {name}: an asset module imports "
                                        f"only {sorted(ASSETS_SHARED)} of assets/")
    return problems


def test_every_import_follows_the_layers_of_docs_architecture():
    assert layer_violations() == []


def test_the_check_sees_lazy_relative_and_from_imports(tmp_path, monkeypatch):
    """The reader itself: a lazy import inside a function, ``from x import module`` and a
    relative import are all found (else the test above could pass on a violating tree)."""
    pkg = tmp_path / "ml"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    bad = pkg / "bad.py"
    bad.write_text("def f():\n    from assets import audit\n    import dagster as dg\n"
                   "from . import sibling\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = [n for _, n in imports_of(bad, "ml")]
    assert "assets.audit" in names and "dagster" in names and "ml.sibling" in names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_every_package_of_the_table_exists(package):
    assert python_files(package), f"{package}/ has no Python files: update ALLOWED"


def test_docs_architecture_states_the_same_rules():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for package, allowed in ALLOWED.items():
        others = sorted(allowed - {package})
        line = f"| `{package}/` | " + (", ".join(f"`{o}`" for o in others) or "nothing first-party")
        assert line in text, f"docs/architecture.md lacks the row: {line} |"


def module_graph() -> dict[str, set[str]]:
    """first-party module -> the first-party modules it imports (every import, lazy ones too)."""
    modules: dict[str, Path] = {}
    for package in ALLOWED:
        for path in python_files(package):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, imported in imports_of(path, name.split(".")[0]):
            # the longest known module the imported name starts with
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back_through_others():
    """No import cycle between first-party modules (a lazy import inside a function included:
    it hides a cycle, it does not remove it)."""
    assert import_cycles(module_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
