"""Layers that read one way, checked on the source: every import statement of our packages,
function-local and `TYPE_CHECKING` ones included, parsed with `ast` (nothing is imported).

- The planner library (planner/ outside the application layer `planner.app` and the CLI) imports
  neither the store (`db`) nor the engine (`runtime.engine`, `runtime.apply`), nor the layers
  above it; and every layer imports only the ones below it (`LAYERS`).
- No import cycle between modules: a cycle hidden behind a function-local import is a cycle.
- Every registered model family has test support (or says why not), so the contract suite
  cannot skip a family that was forgotten.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("planner", "profiler", "runtime", "db", "comfyui_nodes")

APP_LAYERS = ("planner.app", "planner.cli")  # above the planner library
NOT_FROM_LIBRARY = ("db", "runtime.engine", "runtime.apply", *APP_LAYERS)

# Each layer and the layers it may import, lowest first: runtime executes, profiler measures,
# db remembers, the planner library decides (planner/ but for planner.app and planner.cli); the
# application layer joins them; the CLI and the ComfyUI nodes call it.
_BELOW_APP = ("runtime", "profiler", "db", "planner")
LAYERS = {
    "runtime": ("runtime",),
    "profiler": ("runtime", "profiler"),
    "db": ("runtime", "profiler", "db"),
    "planner": ("runtime", "profiler", "planner"),
    "planner.app": (*_BELOW_APP, "planner.app"),
    "planner.cli": (*_BELOW_APP, "planner.app", "planner.cli"),
    "comfyui_nodes": (*_BELOW_APP, "planner.app", "comfyui_nodes"),
}

# The `runtime` package's own `__init__` is the Python API users import (`from runtime import
# apply_plan, apply_auto`): a facade over the layers, whose lazy re-export of the application
# layer's `apply_auto` is the one import allowed to point up. Only the top layers import it.
FACADE = {"runtime": {"planner.app.auto"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `module` imports, anywhere in the file; `from a import b` gives `a.b`
    (b a submodule of a, or a name in a: `_resolve` tells them apart)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str, modules) -> str | None:
    """The module of ours that importing `name` runs last (a.b.c: c, else b, ...)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    graph = {}
    for module, path in modules.items():
        deps = {_resolve(name, modules) for name in imported_names(path, module)}
        graph[module] = deps - {None, module} - FACADE.get(module, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_planner_library_imports_neither_the_store_nor_the_engine():
    modules = our_modules()
    library = [m for m in modules if _within(m, ("planner",)) and not _within(m, APP_LAYERS)]
    assert "planner.costmodel" in library and "planner.search" in library
    wrong = {
        m: sorted(n for n in imported_names(modules[m], m) if _within(n, NOT_FROM_LIBRARY))
        for m in library
    }
    wrong = {m: names for m, names in wrong.items() if names}
    assert not wrong, (
        f"the planner library imports the store, the engine or the layers above it: {wrong}; "
        f"move the work that joins them into planner.app"
    )


def _layer_of(module: str) -> str:
    return max((layer for layer in LAYERS if _within(module, (layer,))), key=len)


def test_each_layer_imports_only_the_layers_below_it():
    wrong = {
        module: sorted(d for d in deps if _layer_of(d) not in LAYERS[_layer_of(module)])
        for module, deps in import_graph().items()
    }
    wrong = {module: deps for module, deps in wrong.items() if deps}
    assert not wrong, f"modules that import a layer above their own: {wrong}"


def test_no_import_cycle_between_our_modules():
    graph = import_graph()
    assert graph["runtime.apply"], "the graph holds function-local imports too"
    found = cycles(graph)
    shown = [{m: sorted(graph[m] & set(c)) for m in c} for c in found]
    assert not found, f"import cycles (module: what it imports within the cycle): {shown}"


def test_only_users_import_the_python_api_facade():
    graph = import_graph()
    below = [m for m in graph if not _within(m, ("comfyui_nodes", *APP_LAYERS))]
    importers = sorted(m for m in below if set(FACADE) & graph[m])
    assert not importers, (
        f"modules below the application layer import the facade package {sorted(FACADE)}: "
        f"{importers}; import the module that defines the name"
    )
    modules = our_modules()
    raw = {_resolve(name, modules) for name in imported_names(modules["runtime"], "runtime")}
    assert FACADE["runtime"] <= raw, "the facade re-exports apply_auto from planner.app.auto"


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from runtime.b import x\n")
    assert "runtime.b.x" in imported_names(path, "runtime.a")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_registered_family_has_test_support():
    from runtime.catalog import all_models
    from runtime.families import families
    from tests.family_support import WITHOUT_SUPPORT, supported_families

    missing = sorted(set(families()) - set(supported_families()) - set(WITHOUT_SUPPORT))
    assert not missing, (
        f"families {missing} have no test support, so the contract suite skips them: add a "
        f"module under tests/family_support and a line in its _MODULES"
    )
    with_models = {spec.family for spec in all_models().values()}
    assert not with_models & set(WITHOUT_SUPPORT), "a family with catalog models needs support"
