"""A component family is one entry in nvllm/registry.py FAMILIES: with that entry alone, a test-only
family gets its hook (a plugin registers components through it), its config group (`greeting=shout`
composes through Hydra, its default is chosen when none is named, `--help` lists its options), its
field in the typed Config, and the engine's build carries it. The table is read as its modules
import, so the entry is added in a fresh process before any of them do: what a line added to the
table's source does."""
import subprocess
import sys
from importlib.resources import files

import pytest

import nvllm.registry

# the table module, loaded by itself (it imports nothing of nvllm) and given the entry before nvllm
# is imported; the rest of the script is a plugin of the new family and its checks
SCRIPT = r'''
import importlib.util
import sys
from dataclasses import dataclass

spec = importlib.util.spec_from_file_location("nvllm.registry", sys.argv[1])
registry = sys.modules["nvllm.registry"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(registry)
registry.FAMILIES["greeting"] = registry.Family("greeting", "register_greetings", "greetings", "__main__.Greeting",
                                                "hello")

from hydra import compose, initialize_config_module

import nvllm
from nvllm import LLM, hookimpl, hookspecs
from nvllm import registry as imported
from nvllm.config import Config, ConfigError, components_help, setup, typed_config
from nvllm.plugins import pm


class Greeting:
    def __init__(self, config):
        self.config = config


class Hello(Greeting):
    """Says hello once."""
    name = "hello"

    @dataclass
    class Config:
        name: str = "hello"
        words: str = "hello"


class Shout(Greeting):
    """Says it louder, `times` times."""
    name = "shout"

    @dataclass
    class Config:
        name: str = "shout"
        words: str = "HELLO"
        times: int = 1


class Plugin:
    @staticmethod
    @hookimpl
    def register_greetings(register):
        register(Hello)
        register(Shout)


nvllm.registry = registry  # the import system sets a submodule's attribute on its package when it imports it
assert hookspecs.register_greetings.__doc__ == "Register greetings: subclasses of ``__main__.Greeting``."
assert imported is registry
pm.register(Plugin, name="nvllm-greetings")  # as an installed package's entry point is
setup()
assert registry.names("greeting") == ["hello", "shout"]
assert "greeting=shout: Says it louder, `times` times." in components_help()

with initialize_config_module("nvllm.conf", version_base="1.3"):
    default = compose("config")
    cfg = compose("config", overrides=["greeting=shout", "greeting.times=3"])
    try:
        compose("config", overrides=["greeting.times=many"])
        raise AssertionError("greeting.times=many composed")
    except Exception as e:
        assert "greeting.times" in str(e), e
assert default.greeting.name == "hello", default.greeting
typed = Config.from_cfg(cfg)
assert isinstance(typed.greeting, Shout.Config) and typed.greeting.times == 3, typed.greeting
try:
    typed_config("greeting", {"name": "shout", "times": "x"})
    raise AssertionError("greeting.times='x' was taken")
except ConfigError as e:
    assert "greeting=shout" in str(e), e

with LLM(sys.argv[2], greeting={"name": "shout", "times": 2}, max_model_len=64) as llm:
    built = registry.build("greeting", llm.engine.config.greeting)  # what the engine was built from carries it
    assert isinstance(built, Shout) and built.config.times == 2, built.config
    assert llm.generate([[1, 2, 3]], nvllm.SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids
print("OK")
'''


def test_a_family_is_one_table_entry(tmp_path, tiny_llama_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, nvllm.registry.__file__, tiny_llama_path], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_the_table_is_what_the_hooks_schema_and_defaults_follow():
    """Every family's hook, group and default come from the table, and `--help`'s defaults list is its."""
    from hydra import compose, initialize_config_module

    from nvllm import hookspecs
    from nvllm.config import Config, Schema, setup
    from nvllm.registry import FAMILIES

    setup()
    hooks = {name for name, fn in vars(hookspecs).items() if getattr(fn, "nvllm_spec", None) is not None}
    assert hooks == {f.hook for f in FAMILIES.values()}
    assert set(FAMILIES) <= set(Schema.__dataclass_fields__) and set(FAMILIES) <= set(Config.__dataclass_fields__)
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        choices = compose("config", return_hydra_config=True).hydra.runtime.choices
    assert {name: choices[name] for name in FAMILIES} == {name: f.default for name, f in FAMILIES.items()}
    # conf/config.yaml names no family: its defaults come from the table alone
    defaults = (files("nvllm.conf") / "config.yaml").read_text().split("defaults:", 1)[1].split("\n\n", 1)[0]
    assert not [name for name in FAMILIES if f"- {name}:" in defaults], defaults


def test_registering_into_a_family_not_in_the_table_is_refused():
    from nvllm import registry
    from nvllm.scheduler.fcfs import FCFSScheduler

    with pytest.raises(ValueError, match="'schedulers' is no component family; the families: model, scheduler, "):
        registry.register("schedulers", FCFSScheduler)
