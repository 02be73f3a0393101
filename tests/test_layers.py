"""Imports run one way, down the layers, and no modules import each other in a circle.

Layers, top to bottom: the project package (factory/project/), waves, devices, the TUF repository
(factory/tuf/), the factory app (tenancy). The CLI (factory/cli/) stands apart: it talks to the
server over HTTP and imports only the Django-free modules it signs and prints with. Imports inside
functions count too: moving an import into a function hides a circle, it does not remove one.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("factory", "devices", "waves")
# What the CLI may import from the rest of the tree (each free of Django and Celery).
CLI_MAY_IMPORT = {"factory", "factory.errors", "factory.logs", "factory.plurals", "factory.tuf", "factory.tuf.keys", "factory.tuf.metadata"}


def layer(module):
    """Higher is lower in the stack; None for the CLI, which has no place in it."""
    if module.startswith("factory.cli"):
        return None
    for depth, prefix in enumerate(("factory.project", "waves", "devices", "factory.tuf", "factory")):
        if module == prefix or module.startswith(prefix + "."):
            return depth
    raise AssertionError(f"{module} belongs to no layer")


def modules():
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue  # migrations name models by dotted paths frozen at the time they were written
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(found):
    """{module: {imported project module}} over every import statement, wherever it stands."""
    graph = {}
    for name, path in found.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here[: len(here) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in found:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def circles(graph):
    """Groups of modules that reach each other (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_imports_run_down_the_layers():
    graph = imports(modules())
    upward = sorted(
        (importer, imported)
        for importer, targets in graph.items()
        for imported in targets
        if layer(importer) is not None and layer(imported) is not None and layer(imported) < layer(importer)
    )
    assert upward == []


def test_no_modules_import_each_other_in_a_circle():
    graph = imports(modules())
    assert [sorted(group) for group in circles(graph)] == []


def test_the_cli_imports_only_django_free_modules():
    found = modules()
    graph = imports(found)
    # The CLI and what it imports (packages included: importing factory.tuf.keys runs
    # factory/__init__.py and factory/tuf/__init__.py) reach no other module of the tree...
    reach = {name for name in found if name.startswith("factory.cli")} | CLI_MAY_IMPORT
    outside = sorted((importer, imported) for importer in reach for imported in graph[importer] if imported not in reach and not imported.startswith("factory.cli"))
    assert outside == []
    # ...and import neither Django nor Celery when they load (tests/test_cli_standalone.py runs it).
    loaded = sorted(
        (name, alias.name if isinstance(node, ast.Import) else node.module)
        for name in reach
        for node in ast.parse(found[name].read_text()).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if ((alias.name if isinstance(node, ast.Import) else node.module) or "").split(".")[0] in ("django", "celery")
    )
    assert loaded == []


def test_nothing_below_imports_the_cli():
    graph = imports(modules())
    assert sorted(i for i, targets in graph.items() if not i.startswith("factory.cli") and any(t.startswith("factory.cli") for t in targets)) == []
