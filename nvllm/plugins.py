"""The one PluginManager. Built-ins register through the same hooks as third-party packages,
which are found through the `nvllm` entry-point group. `load_plugins()` is idempotent.
NVLLM_TRACE_PLUGINS=1 prints every hook call, and what it registered, to stderr."""
import os
import sys
from importlib.metadata import entry_points

import pluggy

from nvllm import hookspecs, registry

DEFAULT_PLUGINS = (
    "nvllm.models.llama",
    "nvllm.models.qwen3",
    "nvllm.scheduler.fcfs",
    "nvllm.scheduler.chunked",
    "nvllm.scheduler.priority",
    "nvllm.kv_cache.paged",
    "nvllm.attention.sdpa",
    "nvllm.attention.cpu",
    "nvllm.attention.triton",
    "nvllm.attention.flash_attn",
    "nvllm.sampler.default",
)

pm = pluggy.PluginManager("nvllm")
pm.add_hookspecs(hookspecs)
_loaded = False


def load_plugins() -> pluggy.PluginManager:
    """Register built-ins and installed entry points once per process, then run the hooks."""
    global _loaded
    if _loaded:
        return pm
    import importlib

    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    for ep in _allowed(entry_points(group="nvllm")):
        origin = f"{ep.dist.name if ep.dist else '?'} (entry point {ep.name!r} = {ep.value})"
        try:
            plugin = ep.load()
        except Exception as e:
            raise RuntimeError(f"nvllm plugin {origin} failed to import: {e!r}") from e
        if pm.get_plugin(ep.name) is None:
            pm.register(plugin, name=ep.name)
            _origins[ep.name] = origin
    pm.check_pending()
    from nvllm.config import store_schema

    store_schema()
    trace = os.environ.get("NVLLM_TRACE_PLUGINS", "") not in ("", "0")
    for family, hook_name in registry.FAMILIES.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            origin = _origins.get(impl.plugin_name, impl.plugin_name)
            registered = []

            def register(cls, f=family, o=origin, done=registered):
                registry.register(f, cls, o)
                done.append(f"{f} {cls.name!r} ({cls.__module__}.{cls.__qualname__})")

            try:
                impl.function(register=register)
            except Exception as e:
                raise RuntimeError(f"nvllm plugin {origin} raised in {hook_name}: {e!r}") from e
            if trace:
                print(f"nvllm plugin trace: {hook_name} of {origin} registered {', '.join(registered) or 'nothing'}",
                      file=sys.stderr)
    _loaded = True
    return pm


_origins: dict[str, str] = {}


def _allowed(eps):
    """NVLLM_PLUGINS=a,b narrows the entry points that load; an empty value loads none."""
    allow = os.environ.get("NVLLM_PLUGINS")
    if allow is None:
        return list(eps)
    wanted = {name.strip() for name in allow.split(",") if name.strip()}
    return [ep for ep in eps if ep.name in wanted]
