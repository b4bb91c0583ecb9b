"""The one PluginManager. Built-ins register through the same hooks as third-party packages,
which are found through the `nvllm` entry-point group. `load_plugins()` is idempotent; a process's
edge calls it (`nvllm.config.setup()` for the entry points, which also hands the registered configs
to Hydra). NVLLM_TRACE_PLUGINS=1 prints every hook call, and what it registered, to stderr."""
import os
import sys
from importlib.metadata import entry_points

import pluggy

from nvllm import hookspecs, registry

DEFAULT_PLUGINS = (
    "nvllm.models.llama",
    "nvllm.models.qwen3",
    "nvllm.models.qwen3_moe",
    "nvllm.scheduler.fcfs",
    "nvllm.scheduler.chunked",
    "nvllm.scheduler.priority",
    "nvllm.kv_cache.paged",
    "nvllm.attention.sdpa",
    "nvllm.attention.cpu",
    "nvllm.attention.triton",
    "nvllm.attention.flash_attn",
    "nvllm.sampler.default",
    "nvllm.forward.eager",
    "nvllm.forward.cudagraph",
    "nvllm.forward.fused_cpu",
    "nvllm.forward.simulated",
    "nvllm.workloads",
    "nvllm.speculative.none",
    "nvllm.speculative.ngram",
    "nvllm.speculative.draft",
    "nvllm.quantization.none",
    "nvllm.quantization.weight_only",
    "nvllm.quantization.gguf",
)

pm = pluggy.PluginManager("nvllm")
pm.add_hookspecs(hookspecs)
_loaded = False


def load_plugins() -> pluggy.PluginManager:
    """Register built-ins and installed entry points once per process, then run the hooks. A
    plugin that fails to import, or raises in a hook, is reported in one line and skipped:
    the others (and `--help`) still work; asking for a component it may have provided says why
    it is missing (see `failed_plugins`)."""
    global _loaded
    if _loaded:
        return pm
    import importlib

    registry.builtin_origins.update(DEFAULT_PLUGINS)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    for ep in _unique(_allowed(entry_points(group="nvllm"))):
        origin = _origin(ep)
        try:
            plugin = ep.load()
        except Exception as e:
            _skip(origin, f"failed to import: {e!r}")
            continue
        if pm.get_plugin(ep.name) is None:
            problem = _hook_problem(plugin)
            if problem is None:
                try:
                    pm.register(plugin, name=ep.name)
                except pluggy.PluginValidationError as e:  # a hook whose arguments the spec does not have
                    problem = f"has a hook nvllm cannot call: {e}"
            if problem is not None:
                _skip(origin, problem)
                continue
            _origins[ep.name] = origin
    pm.check_pending()
    trace = os.environ.get("NVLLM_TRACE_PLUGINS", "") not in ("", "0")
    for family, hook_name in ((f.name, f.hook) for f in registry.FAMILIES.values()):
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            origin = _origins.get(impl.plugin_name, impl.plugin_name)
            registered, refused = [], []

            def register(cls, f=family, o=origin, done=registered, no=refused):
                try:
                    registry.register(f, cls, o)
                except Exception as e:  # a collision or a class without name/Config: an error, not a skip
                    no.append(e)
                    raise
                done.append(f"{f} {cls.name!r} ({cls.__module__}.{cls.__qualname__})")

            try:
                impl.function(register=register)
            except Exception as e:
                if refused:
                    raise refused[0] from None
                if impl.plugin_name not in _origins:  # a built-in: a bug in nvllm itself
                    raise RuntimeError(f"nvllm plugin {origin} raised in {hook_name}: {e!r}") from e
                _skip(origin, f"raised in {hook_name}: {e!r}")
            if trace:
                print(f"nvllm plugin trace: {hook_name} of {origin} registered {', '.join(registered) or 'nothing'}",
                      file=sys.stderr)
    _loaded = True
    return pm


def _hook_problem(plugin) -> str | None:
    """A function marked @hookimpl whose name is no nvllm hook (a misspelling would otherwise never
    be called, or stop every command): what is wrong, naming the nearest hook."""
    import difflib

    hooks = sorted(f.hook for f in registry.FAMILIES.values())
    for name in dir(plugin):
        if pm.parse_hookimpl_opts(plugin, name) is not None and name not in hooks:
            near = difflib.get_close_matches(name, hooks, n=1)
            return (f"defines @hookimpl {name!r}, which is not an nvllm hook"
                    + (f" (did you mean {near[0]!r}?)" if near else "") + f"; the hooks are {', '.join(hooks)}")
    return None


def _origin(ep) -> str:
    return f"{ep.dist.name if ep.dist else '?'} (entry point {ep.name!r} = {ep.value})"


def _skip(origin: str, why: str):
    registry.failed_plugins[origin] = why
    print(f"nvllm: warning: plugin {origin} {why}; skipped (its components are unavailable)", file=sys.stderr)


_origins: dict[str, str] = {}


def _allowed(eps):
    """NVLLM_PLUGINS=a,b narrows the entry points that load; an empty value loads none. A name
    that matches no installed entry point is a warning (a typo would otherwise drop the plugin)."""
    eps = list(eps)
    allow = os.environ.get("NVLLM_PLUGINS")
    if allow is None:
        return eps
    wanted = {name.strip() for name in allow.split(",") if name.strip()}
    unknown = sorted(wanted - {ep.name for ep in eps})
    if unknown:
        installed = ", ".join(sorted(f"{ep.name} ({ep.dist.name if ep.dist else '?'})" for ep in eps)) or "none"
        print(f"nvllm: warning: NVLLM_PLUGINS names {', '.join(map(repr, unknown))}, which no installed plugin "
              f"provides; installed entry points: {installed}", file=sys.stderr)
    return [ep for ep in eps if ep.name in wanted]


def _unique(eps):
    """One entry point per name: the same distribution seen twice on sys.path counts once; two
    distributions claiming one name is an error naming both (one would silently shadow the other)."""
    by_name = {}
    for ep in eps:
        seen = by_name.setdefault(ep.name, ep)
        if seen is not ep and (seen.dist and seen.dist.name) != (ep.dist and ep.dist.name):
            raise RuntimeError(f"two nvllm plugins use the entry-point name {ep.name!r}: {_origin(seen)} and "
                               f"{_origin(ep)}; uninstall one, or rename the entry point in its pyproject.toml")
    return list(by_name.values())
