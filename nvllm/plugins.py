"""The one PluginManager. Built-ins register through the same hooks as third-party packages,
which are found through the `nvllm` entry-point group. `load_plugins()` is idempotent."""
import os
from importlib.metadata import entry_points

import pluggy

from nvllm import hookspecs, registry

DEFAULT_PLUGINS = (
    "nvllm.models.llama",
    "nvllm.models.qwen3",
    "nvllm.scheduler.fcfs",
    "nvllm.kv_cache.paged",
    "nvllm.attention.sdpa",
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
    for family, hook_name in registry.FAMILIES.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            origin = _origins.get(impl.plugin_name, impl.plugin_name)
            try:
                impl.function(register=lambda cls, f=family, o=origin: registry.register(f, cls, o))
            except Exception as e:
                raise RuntimeError(f"nvllm plugin {origin} raised in {hook_name}: {e!r}") from e
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
