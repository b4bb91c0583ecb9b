"""Name -> component class, per family. Registering also stores the component's Config
dataclass in Hydra's ConfigStore under the family's group, so `<family>=<name>` composes."""
import dataclasses

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, ValidationError

from nvllm.errors import ConfigError

FAMILIES = {  # family (= Hydra config group) -> hook that fills it
    "model": "register_models",
    "scheduler": "register_schedulers",
    "kv_cache": "register_kv_caches",
    "attention": "register_attention_backends",
    "sampler": "register_samplers",
    "forward": "register_forward_strategies",
}

_components: dict[str, dict[str, type]] = {family: {} for family in FAMILIES}
_origins: dict[tuple[str, str], str] = {}
failed_plugins: dict[str, str] = {}  # plugin origin -> why it was skipped (filled by nvllm.plugins)


class UnknownComponentError(ValueError):
    pass


def register(family: str, cls: type, origin: str = "nvllm") -> None:
    name = getattr(cls, "name", None)
    config = getattr(cls, "Config", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls!r} registered as a {family} has no string `name` attribute")
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"{family} {name!r} ({cls!r}) needs a `Config` dataclass")
    known = _components[family].get(name)
    if known is not None and known is not cls:
        raise ValueError(
            f"two plugins register the {family} {name!r}: {_origins[family, name]} "
            f"({known.__module__}.{known.__qualname__}) and {origin} ({cls.__module__}.{cls.__qualname__})"
        )
    _components[family][name] = cls
    _origins[family, name] = origin
    # the stored node has `name` filled in, so the composed group says which class to build
    ConfigStore.instance().store(group=family, name=name, node=config(name=name), provider=origin)


def names(family: str) -> list[str]:
    return sorted(_components[family])


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


def typed_config(family: str, cfg) -> object:
    """The composed group node (DictConfig or dict) as the component's own Config dataclass; a
    field of the wrong type or out of range is a ConfigError naming the key."""
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cls = get(family, cfg.get("name"))
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), cfg))
    except (ValidationError, AssertionError, ValueError, TypeError) as e:
        raise ConfigError(f"{family}={cls.name}: {e}".strip()) from None


def build(family: str, cfg, **kwargs):
    config = cfg if dataclasses.is_dataclass(cfg) else typed_config(family, cfg)
    return get(family, config.name)(config, **kwargs)
