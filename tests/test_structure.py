"""The module structure, read from the source with `ast`: nvllm's modules import one another
without a cycle (imports inside functions count), the registry knows nothing of Hydra, and the
plugins are loaded and Hydra's ConfigStore written only at the edges."""
import ast
from pathlib import Path

import nvllm

PACKAGE = Path(nvllm.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in the source of `module`,
    at any depth, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def module_imports(module: str) -> list[tuple[str, list[str]]]:
    return imports(module, MODULES[module].read_text(), MODULES[module].name == "__init__.py")


def import_graph() -> dict[str, set[str]]:
    """Module -> the nvllm modules it imports. `from a import b` is an edge to the submodule a.b
    when there is one, else to a (its `__init__`); `import a.b` is an edge to a.b only: a package
    importing its own submodules is no cycle with their parent import."""
    graph = {}
    for module in MODULES:
        edges = set()
        for base, names in module_imports(module):
            if not names:
                edges.add(base)
            for name in names:
                edges.add(f"{base}.{name}" if f"{base}.{name}" in MODULES else base)
        graph[module] = {m for m in edges if m in MODULES and m != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as the modules along it (the first repeated at the end), or None."""
    done, path, on_path = set(), [], set()

    def visit(module):
        path.append(module)
        on_path.add(module)
        for imported in sorted(graph[module]):
            if imported in on_path:
                return path[path.index(imported):] + [imported]
            if imported not in done:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "nvllm.plugins" in graph["nvllm.config.compose"]  # a module-level import
    assert "nvllm.config" in graph["nvllm.run"] and "nvllm.engine.llm_engine" in graph["nvllm.run"]  # one in run()
    assert "nvllm" in graph["nvllm.tools.bench"]  # `from nvllm import LLM`, in a function: the package's __init__
    assert imports("nvllm.engine.x", "def f():\n    from . import sequence\n    from ..models import base as b") == [
        ("nvllm.engine", ["sequence"]), ("nvllm.models", ["base"])]
    assert imports("nvllm.engine", "from .sequence import Sequence", is_package=True) == [
        ("nvllm.engine.sequence", ["Sequence"])]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, (f"import cycle: {' -> '.join(cycle)}; move what both need into a module below "
                           f"them, or pass it in from the edge")


def package_graph() -> dict[str, set[str]]:
    """Package (or top-level module) -> those it imports: `nvllm.engine.model_runner` counts as
    `nvllm.engine`. The package's own `__init__` (the public API, the top of the graph) is left out."""
    top = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    graph = {}
    for module, edges in import_graph().items():
        if module != "nvllm":
            graph.setdefault(top(module), set()).update(top(e) for e in edges if e != "nvllm")
    return {p: edges - {p} for p, edges in graph.items()}


def test_no_package_level_cycle():
    """Dependencies run one way: engine -> forward -> models, attention, kernels, never back; what
    two packages both need (the records of a step, the clock, the request) lives below both."""
    graph = package_graph()
    assert "nvllm.forward" in graph["nvllm.engine"] and "nvllm.step" in graph["nvllm.forward"]
    cycle = find_cycle(graph)
    assert cycle is None, (f"package cycle: {' -> '.join(cycle)}; move what both need into a module below "
                           f"them, or pass it in from the edge")
    assert find_cycle({"nvllm.a": {"nvllm.b"}, "nvllm.b": {"nvllm.a"}}) == ["nvllm.a", "nvllm.b", "nvllm.a"]


def test_registry_knows_nothing_of_hydra():
    frameworks = {base.split(".")[0] for base, _ in module_imports("nvllm.registry")} & {"hydra", "omegaconf"}
    assert not frameworks, f"nvllm/registry.py imports {frameworks}: Hydra belongs to nvllm.config.setup()"


def test_only_the_config_edge_writes_hydras_config_store():
    writers = {m for m in MODULES for base, names in module_imports(m)
               if base == "hydra.core.config_store" or (base == "hydra.core" and "config_store" in names)}
    assert writers == {"nvllm.config.compose"}, f"{writers}: store configs in nvllm.config.setup(), the one edge"


def test_plugins_are_loaded_only_at_the_edges():
    """The entry points load them through nvllm.config.setup(); processes that start on their own load
    them too: a tensor-parallel worker, the checkpoint tool, the conformance suites plugin tests run."""
    edges = {"nvllm.config.compose", "nvllm.distributed.workers", "nvllm.tools.checkpoint", "nvllm.testing.common",
             "nvllm.testing.model"}
    callers = {m for m in MODULES if any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_plugins"
                                         for node in ast.walk(ast.parse(MODULES[m].read_text())))}
    assert callers <= edges, (f"{sorted(callers - edges)} load the plugins; call nvllm.config.setup() in the entry "
                              f"point that reaches them instead")
