"""The package's shape: no import circles (counting imports inside functions and under
``TYPE_CHECKING``), and the engine never imports the Celery layer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ff_celery"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> dict[str, set[str]]:
    """Each module's imports of other ff_celery modules, wherever in the module they are."""
    known = modules()

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
        targets = {owner(name) for name in names if name.startswith("ff_celery")}
        # a package's own __init__ is not an import of the package by its modules
        graph[module] = {t for t in targets if t and t != module and not module.startswith(f"{t}.")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others():
    assert circles(imports()) == []


def test_the_engine_knows_nothing_of_celery():
    for module, targets in imports().items():
        if module.startswith("ff_celery.engine"):
            assert {t for t in targets if not t.startswith("ff_celery.engine")} == set(), module
    for path in (PACKAGE / "engine").rglob("*.py"):
        nodes = list(ast.walk(ast.parse(path.read_text())))
        used = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        used |= {node.module or "" for node in nodes if isinstance(node, ast.ImportFrom)}
        assert not {name.split(".")[0] for name in used} & {"celery", "kombu"}, path
