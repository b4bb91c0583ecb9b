"""The component families, one table (FAMILIES: adding a family is adding an entry), and name ->
component class per family. It knows nothing of Hydra: `nvllm.config.setup()` stores each
registered component's Config dataclass in Hydra's ConfigStore, so `<family>=<name>` composes."""
import dataclasses
from typing import NamedTuple


class Family(NamedTuple):
    """A component family: one entry in FAMILIES makes the Hydra config group, its `register_*` hook
    (nvllm/hookspecs.py), its field in the schema and in the typed Config, and its default."""
    name: str  # the config group: `<name>=<option>` on the command line
    hook: str  # the pluggy hook plugins implement to fill it
    what: str  # what the hook registers, for its docstring: "Register <what>: subclasses of <base>."
    base: str  # the class its components subclass (a dotted path: the registry imports none of them)
    default: str  # the option a run uses when the command line names none
    auto: bool = False  # `<name>=auto` is decided in Config.resolve, once the checkpoint and device are known


FAMILIES: dict[str, Family] = {f.name: f for f in (  # in the order of the defaults list and `--help`
    Family("model", "register_models", "model architectures", "nvllm.models.base.CausalLM", "smollm2"),
    Family("scheduler", "register_schedulers", "scheduler policies", "nvllm.scheduler.base.Scheduler", "fcfs"),
    Family("kv_cache", "register_kv_caches", "KV cache allocators", "nvllm.kv_cache.base.KVCacheAllocator", "paged"),
    Family("attention", "register_attention_backends", "attention backends", "nvllm.attention.base.AttentionBackend",
           "auto", auto=True),
    Family("sampler", "register_samplers", "samplers", "nvllm.sampler.base.Sampler", "default"),
    Family("forward", "register_forward_strategies", "ways of running a step's forward pass",
           "nvllm.forward.base.ForwardStrategy", "auto", auto=True),
    Family("speculative", "register_drafters", "speculative-decoding drafters", "nvllm.speculative.base.Drafter",
           "none"),
    Family("workload", "register_workloads", "workloads (what a run sends, datasets included)",
           "nvllm.workloads.Workload", "chat"),
    Family("quantization", "register_quantizations", "weight formats", "nvllm.quantization.base.QuantizationMethod",
           "none"),
)}

_components: dict[str, dict[str, type]] = {}
_origins: dict[tuple[str, str], str] = {}
failed_plugins: dict[str, str] = {}  # plugin origin -> why it was skipped (filled by nvllm.plugins)
builtin_origins: set[str] = {"nvllm"}  # the origins of nvllm's own components (DEFAULT_PLUGINS, added by nvllm.plugins)


class UnknownComponentError(ValueError):
    pass


def register(family: str, cls: type, origin: str = "nvllm") -> None:
    if family not in FAMILIES:
        raise ValueError(f"{family!r} is no component family; the families: {', '.join(FAMILIES)}")
    name = getattr(cls, "name", None)
    config = getattr(cls, "Config", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls!r} registered as a {family} has no string `name` attribute")
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"{family} {name!r} ({cls!r}) needs a `Config` dataclass")
    known = _components.get(family, {}).get(name)
    if known is not None and known is not cls:
        first = _origins[family, name]
        if is_builtin(first) or is_builtin(origin):  # pluggy calls the hooks newest first: a plugin's may come first
            plugin, theirs = (origin, cls) if is_builtin(first) else (first, known)
            builtin = known if is_builtin(first) else cls
            raise ValueError(
                f"the plugin {plugin} registers the {family} {name!r} ({theirs.__module__}.{theirs.__qualname__}), "
                f"and {name!r} is nvllm's built-in {builtin.__module__}.{builtin.__qualname__}: a plugin cannot "
                f"replace a built-in. Give the plugin's class another `name` (and its Config's `name` default)")
        raise ValueError(
            f"two plugins register the {family} {name!r}: {first} "
            f"({known.__module__}.{known.__qualname__}) and {origin} ({cls.__module__}.{cls.__qualname__})"
        )
    _components.setdefault(family, {})[name] = cls
    _origins[family, name] = origin


def is_builtin(origin: str) -> bool:
    """Whether a component's origin is nvllm itself (a built-in registers under its module's name)."""
    return origin in builtin_origins


def names(family: str) -> list[str]:
    return sorted(_components.get(family, ()))


def origin(family: str, name: str) -> str:
    """Who registered the component: "nvllm" for a built-in, else the plugin's distribution."""
    return _origins[family, name]


def get(family: str, name: str) -> type:
    try:
        return _components[family][name]
    except KeyError:
        valid = ", ".join(names(family)) or "(none registered)"
        raise UnknownComponentError(
            f"unknown {family} {name!r}; valid names: {valid}. " + (failed_plugins_note() or
            f"A {family} from a plugin package appears here once the package is pip-installed.")
        ) from None


def failed_plugins_note() -> str:
    """Why a component a plugin provides may be missing: the plugins that were skipped."""
    return "".join(f"The plugin {origin} {why}, and may have provided it. " for origin, why in failed_plugins.items())


def make_config(family: str, cfg) -> object:
    """The component's Config: a Config instance as it is, a name as `Config(name=name)`, a dict
    as `Config(**cfg)`. A composed Hydra node goes through `nvllm.config.typed_config` instead,
    which checks each field's type."""
    if dataclasses.is_dataclass(cfg):
        return cfg
    if isinstance(cfg, str):
        return get(family, cfg).Config(name=cfg)
    return get(family, cfg.get("name")).Config(**cfg)


def build(family: str, cfg, **kwargs):
    """The component `cfg` names (a Config instance, a name or a dict: see `make_config`), built
    with its Config and `kwargs`."""
    config = make_config(family, cfg)
    return get(family, config.name)(config, **kwargs)
