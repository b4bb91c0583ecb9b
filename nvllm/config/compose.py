"""Where the components meet Hydra: `setup()` loads the plugins and stores the schema and every
registered component's Config in Hydra's ConfigStore; `compose()`, the config the CLI would compose
from Python values (the Python API's); the checks of what was composed or asked for that Hydra does
not make itself; and the components' lines in `--help`."""
import os
import re
from dataclasses import fields

from omegaconf import DictConfig, OmegaConf

from nvllm import registry
from nvllm.config.resolve import models_note
from nvllm.config.schema import Schema
from nvllm.errors import ConfigError
from nvllm.plugins import load_plugins


_stored = False


def setup() -> None:
    """The one place the components meet Hydra, called by every entry point before Hydra composes
    (`python -m nvllm.run`, also in its task function since a launcher's job process starts without
    the module body; `python -m nvllm.serve`; `compose()`, and so `LLM(...)`). Loads the plugins,
    then stores in Hydra's ConfigStore the schema (`nvllm_schema`) and each registered component's
    Config under its family's group, so `<family>=<name>` composes, shows in `--help` and sweeps.
    Once per process: a component registered later is not stored."""
    global _stored
    load_plugins()
    if _stored:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="nvllm_schema", node=Schema, provider="nvllm")
    for family in registry.FAMILIES:
        for name in registry.names(family):
            # the stored node has `name` filled in, so the composed group says which class to build
            store.store(group=family, name=name, node=registry.get(family, name).Config(name=name),
                        provider=registry.origin(family, name))
    if not OmegaConf.has_resolver("nvllm_components"):  # `--help` lists each component with one line on it
        OmegaConf.register_new_resolver("nvllm_components", components_help)
    _stored = True


def components_help() -> str:
    """Every registered component, a line each: `family=name: the first line of its docstring`
    (its class's, else its module's first sentence)."""
    import sys

    lines = []
    for family in registry.FAMILIES:
        if registry.FAMILIES[family].auto:
            lines.append(f"  {family}=auto: the best-ranked {family} whose own check passes here "
                         f"(metrics.json says which and why)")
        for name in registry.names(family):
            cls = registry.get(family, name)
            doc = (cls.__doc__ or "").strip() or " ".join((sys.modules[cls.__module__].__doc__ or "").split())
            first = doc.splitlines()[0] if cls.__doc__ else re.split(r"(?<=\.)\s", doc, maxsplit=1)[0]
            if len(first) > 110:
                first = first[:107].rsplit(" ", 1)[0] + " ..."
            lines.append(f"  {family}={name}: {first}")
    return "\n".join(lines)


def compose(**overrides) -> DictConfig:
    """The Hydra config the CLI would compose, from Python values: a string for a group picks
    an option (`scheduler="fcfs"`); a dict sets fields of the group, and its `name`, if any, picks
    the option first (`model={"name": "qwen3", "path": "/models/q"}`); anything else sets a
    top-level key (`max_num_seqs=4`). `model` may also be a Hugging Face model directory or repo id
    (`"Qwen/Qwen3-0.6B"`: from the local Hugging Face cache, or downloaded where the hub is reachable)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    setup()
    model = overrides.get("model")
    if isinstance(model, str) and ("/" in model or os.path.isdir(model)):
        overrides["model"] = {"name": detect_architecture(model), "path": model}
    choices, values = [], {}
    for key, value in overrides.items():
        if key in registry.FAMILIES and isinstance(value, str):
            choices.append(f"{key}={value}")
        elif key in registry.FAMILIES and isinstance(value, dict) and "name" in value:
            choices.append(f"{key}={value['name']}")
            values[key] = value
        else:
            values[key] = value
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=choices)
    try:
        return OmegaConf.merge(cfg, values)
    except Exception as e:  # an unknown key: struct mode names it
        raise ConfigError(f"bad override: {e}") from None


def detect_architecture(path: str) -> str:
    """The registered architecture that runs the model_type in `path`/config.json (`path`: a model
    directory or a Hugging Face repo id): nvllm's own where one runs it, else the one plugin's that
    does; several plugins' are refused, naming them."""
    import json
    from pathlib import Path

    from nvllm.models.weights import locate

    load_plugins()
    config_file = Path(locate(path)) / "config.json"  # a directory, or a Hugging Face repo id
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    runs = [name for name in registry.names("model") if model_type in registry.get("model", name).hf_model_types]
    # nvllm's own architecture wins: a plugin's (a subclass inherits hf_model_types) runs when named
    runs = [name for name in runs if registry.is_builtin(registry.origin("model", name))] or runs
    if len(runs) > 1:
        raise ConfigError(f"{config_file} holds a model_type {model_type!r} model, which several architectures run: "
                          f"{models_note(runs)}; name the one to use (model={{'name': '{runs[0]}', 'path': ...}} in "
                          f"Python, model={runs[0]} model.path=... on the command line)")
    if not runs:
        architectures = ", ".join(config.get("architectures") or []) or "none named"
        raise ConfigError(f"{config_file} holds a model_type {model_type!r} model (architectures: {architectures}), "
                          f"which no registered architecture runs. The models here: {models_note()}. A plugin "
                          f"package that provides it (see docs/plugins.md) is found once pip-installed. "
                          f"{registry.failed_plugins_note()}".strip())
    return runs[0]


def check_composed(cfg: DictConfig) -> None:
    """What Hydra composed and cannot catch itself, refused in one ConfigError each: an interpolation
    that does not resolve (`max_num_seqs=${oops}`, `${oc.env:UNSET}`), a group deleted (`~model`),
    a key no schema has (`+unknown=1`: Hydra lets `+` add keys to a structured config), named with the
    nearest valid key."""
    import difflib
    from dataclasses import is_dataclass

    from omegaconf.errors import InterpolationResolutionError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as e:
        key = str(e.full_key or e.key)
        raw = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else raw
        cause = str(e.__cause__ or e).splitlines()[0].strip()
        raise ConfigError(f"{key}={raw} does not resolve ({cause}): give {key} a value, or set what it refers to "
                          f"(an environment variable with oc.env takes a default: ${{oc.env:NAME,default}})") from None
    for group in (*registry.FAMILIES, "sampling", "serve"):
        if cfg.get(group) is None:
            choose = (f"choose one with {group}=<name> ({', '.join(group_options(group))}) or "
                      if group in registry.FAMILIES else "")
            raise ConfigError(f"{group} is required and the command line deleted it (~{group}): {choose}drop ~{group}")

    def walk(node, prefix: str):
        schema = OmegaConf.get_type(node)
        known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
        for key in node.keys():
            name = f"{prefix}{key}"
            if known is not None and key not in known:
                near = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f"did you mean {prefix}{near[0]}?" if near else f"the keys here: {', '.join(sorted(known))}"
                raise ConfigError(f"{name} is not a key nvllm knows ({hint}); `python -m nvllm.run --help` lists them")
            value = node._get_node(key)
            if isinstance(value, DictConfig) and not value._is_none():
                walk(value, f"{name}.")

    walk(cfg, "")


def group_options(group: str) -> list[str]:
    """The options `group=<name>` takes: its YAML files in conf/<group>/ (a family may have none) and
    its registered components."""
    from importlib.resources import files

    folder = files("nvllm.conf") / group
    yaml = [f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")] if folder.is_dir() else []
    return sorted({*yaml, *(registry.names(group) if group in registry.FAMILIES else ())})


def check_requested(choices: dict) -> None:
    """`family=name` choices naming no registered component or config option, while a plugin was
    skipped: an error naming that plugin and why (instead of a bare "not found"). Call it once the
    plugins are loaded."""
    if not registry.failed_plugins:
        return
    for family, name in choices.items():
        if family in registry.FAMILIES and isinstance(name, str) and name not in group_options(family):
            raise registry.UnknownComponentError(f"{family}={name}: no {family} of that name is available. "
                                                 f"{registry.failed_plugins_note()}Fix or uninstall that plugin.")
