"""The module graph of src/: no import cycle (module or package level), built-ins that do not import each other,
linalg and the registry at the bottom. Every import counts: module level, inside functions, under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "safety_subspaces"
# packages whose modules are registered built-ins: each must stand alone (shared code lives in the package's
# __init__ or in a helper module), so adding one is one new file
REGISTRY_PACKAGES = ["subspaces", "edits", "evaluate.judges", "analyses", "study.jobs", "study.executors",
                     "study.report.figures", "transforms", "finetune.constraints"]


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, whether it is a package's __init__)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The project modules a module imports anywhere in it (relative imports resolved, `from x import module` too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in known else target)
    return {module for module in found if module in known and module != name}


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    found = modules()
    return {name: imports_of(name, path, is_package, set(found)) for name, (path, is_package) in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def top_level(module: str) -> str:
    """The first component under the package (study for safety_subspaces.study.runner)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_module_graph_has_no_cycle():
    edges = graph()
    assert len(edges) > 60 and edges["safety_subspaces.study.runner"]  # the walk found the modules and their imports
    assert cycles(edges) == []


def test_the_package_graph_has_no_cycle():
    packages: dict[str, set[str]] = {}
    for module, imported in graph().items():
        packages.setdefault(top_level(module), set()).update(top_level(i) for i in imported if top_level(i) != top_level(module))
    assert cycles(packages) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_linalg_imports_nothing_from_the_project_and_the_registry_only_errors_and_schema():
    edges = graph()
    assert edges["safety_subspaces.linalg"] == set()
    assert edges["safety_subspaces.registry"] <= {"safety_subspaces.errors", "safety_subspaces.schema"}
    assert edges["safety_subspaces.schema"] <= {"safety_subspaces.errors"}


def registering(path: Path) -> bool:
    """Whether a module registers an entry (a decorator or call `X.register(...)`, or a figure(...) decorator)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register":
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "figure":
            return True
    return False


@pytest.mark.parametrize("package", REGISTRY_PACKAGES)
def test_built_ins_of_a_registry_do_not_import_each_other(package):
    edges, found = graph(), modules()
    prefix = f"{PACKAGE}.{package}"
    built_ins = {name for name, (path, is_package) in found.items()
                 if name.startswith(prefix + ".") and name.count(".") == prefix.count(".") + 1 and not is_package
                 and registering(path)}
    assert built_ins, f"no registering module found in {package}"
    sideways = {(name, other) for name in built_ins for other in edges[name] & built_ins}
    assert sideways == set()


def test_sibling_analyses_do_not_import_each_other():
    edges = graph()
    analyses = {f"{PACKAGE}.analyses.{name}" for name in ("energy", "weight_overlap", "activation_overlap")}
    assert all(not (edges[name] & analyses) for name in analyses)
