"""The package's shape: folders that are its layers, each with a front door, and imports that
follow the layers.

- No import circles (counting imports inside functions and under ``TYPE_CHECKING``).
- The engine (``ff_celery/engine/``) never imports the Celery layer, nor Celery or kombu.
- Every package has an ``__init__.py`` with a docstring and a literal ``__all__``.
- Outside the engine, the package imports the engine only through its front door:
  ``from ff_celery.engine import <names>``, each name in ``ff_celery.engine.__all__``. No
  exemptions inside ``ff_celery/``; tests, ``bench/`` and ``scripts/`` are outside the rule
  (they test and measure the engine's parts one by one).
- Inside the engine, the layers stack: ``core`` (with ``functions``, the typed calls it sends)
  imports neither ``work`` nor ``duties``, ``work`` does not import ``duties``, and no engine
  module imports the front door (it imports its siblings by their paths).
- The development tools (``ff_celery/devtools/``) are imported by the command line only.
"""

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


def import_nodes(path: Path) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import | ast.ImportFrom)]


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
        for node in import_nodes(path):
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


def test_every_package_has_a_front_door():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), init
        exported = [
            node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        ]
        assert exported, f"{init} has no __all__"
    for folder in PACKAGE.rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), folder


def test_the_celery_layer_enters_the_engine_by_its_front_door():
    import ff_celery.engine

    front_door = set(ff_celery.engine.__all__)
    for path in PACKAGE.rglob("*.py"):
        if (PACKAGE / "engine") in path.parents:
            continue
        for node in import_nodes(path):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("ff_celery.engine")], path
            elif node.module and node.module.startswith("ff_celery.engine"):
                assert node.module == "ff_celery.engine", f"{path} imports {node.module}"
                assert {a.name for a in node.names} <= front_door, f"{path}: not in ff_celery.engine.__all__"
            elif node.module == "ff_celery":
                assert "engine" not in {a.name for a in node.names}, path


def test_the_engine_layers_stack():
    below = {
        "core": {"core", "functions"},
        "functions": {"core", "functions"},
        "work": {"core", "functions", "work"},
        "duties": {"core", "functions", "work", "duties"},
    }
    for module, targets in imports().items():
        if not module.startswith("ff_celery.engine."):
            continue
        layer = module.split(".")[2]
        reached = {t.split(".")[2] for t in targets if t.startswith("ff_celery.engine.")}
        assert reached <= below[layer], f"{module} imports {reached - below[layer]}"
    for path in (PACKAGE / "engine").rglob("*.py"):
        for node in import_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.module == "ff_celery.engine":  # a subpackage only
                assert {a.name for a in node.names} <= {"core", "work", "duties", "functions"}, path


def test_only_the_command_line_uses_the_development_tools():
    for module, targets in imports().items():
        if module.startswith(("ff_celery.devtools", "ff_celery.cli")):
            continue
        assert not {t for t in targets if t.startswith("ff_celery.devtools")}, module
