"""Plugin discovery through the `nvllm` entry-point group, in fresh processes (as a user gets it).
The plugin is a real distribution on sys.path (a module plus its .dist-info), found by
importlib.metadata exactly as a pip-installed one is."""
import os
import subprocess
import sys
import textwrap

import pytest

from nvllm import registry
from nvllm.plugins import load_plugins
from nvllm.registry import UnknownComponentError

PLUGIN = '''
from dataclasses import dataclass
from nvllm import hookimpl
from nvllm.scheduler.fcfs import FCFSScheduler

class ReversePolicy(FCFSScheduler):
    """fcfs, but admits the newest waiting request first."""
    name = "reverse_fcfs"

    @dataclass
    class Config:
        name: str = "reverse_fcfs"
        # only here to show that a plugin's fields compose
        note: str = "hello"

    def schedule(self, lookahead=0):
        if self.waiting and not self.running:
            self.waiting.rotate(1)
        return super().schedule(lookahead)

@hookimpl
def register_schedulers(register):
    register(ReversePolicy)
'''


def make_distribution(site, name="nvllm-reverse", module="nvllm_reverse", body=PLUGIN, ep_name="reverse"):
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(body))
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nvllm]\n{ep_name} = {module}\n")
    return site


def python(code, site, **env):
    full_env = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_entry_point_plugin_is_selectable_and_listed(tmp_path, tiny_qwen3_path):
    site = make_distribution(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, check=True)
    assert "reverse_fcfs" in proc.stdout.split("scheduler: ", 1)[1].splitlines()[0]
    proc = python(f"""
        from nvllm import LLM, SamplingParams
        with LLM({tiny_qwen3_path!r}, scheduler={{"name": "reverse_fcfs", "note": "hi"}}, max_num_seqs=1) as llm:
            outs = llm.generate([[1, 2], [3, 4]], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
            print(type(llm.engine.scheduler).__name__, llm.engine.scheduler.config.note, [len(o.outputs[0].token_ids) for o in outs])
    """, site)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ReversePolicy hi [3, 3]"


def test_allow_list(tmp_path):
    site = make_distribution(tmp_path / "site")
    code = "from nvllm.plugins import load_plugins; from nvllm import registry; load_plugins(); print(registry.names('scheduler'))"
    assert "reverse_fcfs" in python(code, site).stdout
    assert "reverse_fcfs" in python(code, site, NVLLM_PLUGINS="reverse,other").stdout
    assert "reverse_fcfs" not in python(code, site, NVLLM_PLUGINS="other").stdout
    assert "reverse_fcfs" not in python(code, site, NVLLM_PLUGINS="").stdout


def test_broken_plugins_are_skipped_naming_the_distribution(tmp_path):
    """Reported in one line and skipped, so that the other plugins still load (tests/test_faults.py
    shows the error when a component of the broken plugin is asked for)."""
    code = "from nvllm.plugins import load_plugins; load_plugins(); print('LOADED')"
    site = make_distribution(tmp_path / "a", body="import no_such_module_xyz\n")
    proc = python(code, site)
    assert proc.returncode == 0 and "LOADED" in proc.stdout
    assert ("nvllm: warning: plugin nvllm-reverse (entry point 'reverse' = nvllm_reverse) failed to import: "
            "ModuleNotFoundError") in proc.stderr
    raising = "from nvllm import hookimpl\n@hookimpl\ndef register_samplers(register):\n    raise RuntimeError('boom')\n"
    proc = python(code, make_distribution(tmp_path / "b", body=raising))
    assert proc.returncode == 0
    assert "plugin nvllm-reverse (entry point 'reverse' = nvllm_reverse) raised in register_samplers" in proc.stderr



@pytest.mark.slow  # plugins and --help in fresh processes
def test_a_misspelt_or_wrongly_signed_hook_is_skipped_and_help_still_works(tmp_path):
    """docs/plugins.md promises a one-line warning and a skip, not a pluggy traceback from every
    command, `--help` included."""
    misspelt = "from nvllm import hookimpl\n@hookimpl\ndef register_schedulerz(register):\n    pass\n"
    site = make_distribution(tmp_path / "c", body=misspelt)
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "== Configuration groups ==" in proc.stdout and "Traceback" not in proc.stderr
    assert ("nvllm: warning: plugin nvllm-reverse (entry point 'reverse' = nvllm_reverse) defines @hookimpl "
            "'register_schedulerz', which is not an nvllm hook (did you mean 'register_schedulers'?)") in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "register_schedulerz" in line]) == 1
    wrong = "from nvllm import hookimpl\n@hookimpl\ndef register_samplers(register, extra):\n    pass\n"
    code = "from nvllm.plugins import load_plugins; load_plugins(); print('LOADED')"
    proc = python(code, make_distribution(tmp_path / "d", body=wrong))
    assert proc.returncode == 0 and "LOADED" in proc.stdout and "Traceback" not in proc.stderr
    assert "(entry point 'reverse' = nvllm_reverse) has a hook nvllm cannot call" in proc.stderr and "extra" in proc.stderr


def test_two_plugins_with_one_name_is_an_error(tmp_path):
    site = make_distribution(tmp_path / "site")
    make_distribution(site, name="nvllm-reverse-two", module="nvllm_reverse_two", ep_name="reverse2")
    proc = python("from nvllm.plugins import load_plugins; load_plugins()", site)
    assert proc.returncode != 0
    assert "two plugins register the scheduler 'reverse_fcfs'" in proc.stderr
    assert "nvllm-reverse (" in proc.stderr and "nvllm-reverse-two (" in proc.stderr


COLLIDING_MODEL = '''
from dataclasses import dataclass
from nvllm import hookimpl
from nvllm.models.base import CausalLM, ModelConfig

class MyQwen3(CausalLM):
    name = "qwen3"

    @dataclass
    class Config(ModelConfig):
        name: str = "qwen3"

@hookimpl
def register_models(register):
    register(MyQwen3)
'''


def test_a_model_plugin_cannot_take_a_built_in_name(tmp_path):
    site = make_distribution(tmp_path / "site", name="nvllm-myqwen", module="nvllm_myqwen", body=COLLIDING_MODEL,
                             ep_name="myqwen")
    proc = python("from nvllm.plugins import load_plugins; load_plugins()", site)
    assert proc.returncode != 0
    assert ("the plugin nvllm-myqwen (entry point 'myqwen' = nvllm_myqwen) registers the model 'qwen3' "
            "(nvllm_myqwen.MyQwen3), and 'qwen3' is nvllm's built-in nvllm.models.qwen3.Qwen3ForCausalLM: a plugin "
            "cannot replace a built-in. Give the plugin's class another `name`") in proc.stderr


def test_a_checkpoint_several_architectures_run_is_never_given_to_a_plugin_silently(tmp_path, tiny_llama_path):
    """A plugin's architecture that also runs a built-in's model_type (a subclass inherits
    hf_model_types) runs only when named; two plugins' for one model_type are refused, naming both."""
    import json
    import shutil

    def claiming(name, model_type):
        return COLLIDING_MODEL.replace('"qwen3"', f'"{name}"').replace(
            "MyQwen3(CausalLM):", f"MyQwen3(CausalLM):\n    hf_model_types = ('{model_type}',)")

    site = make_distribution(tmp_path / "site", name="nvllm-a", module="nvllm_a", body=claiming("a_llama", "llama"),
                             ep_name="a")
    make_distribution(site, name="nvllm-b", module="nvllm_b", body=claiming("b_granite", "granite"), ep_name="b")
    make_distribution(site, name="nvllm-c", module="nvllm_c", body=claiming("c_granite", "granite"), ep_name="c")
    granite = shutil.copytree(tiny_llama_path, tmp_path / "granite")
    config = json.loads((granite / "config.json").read_text())
    (granite / "config.json").write_text(json.dumps({**config, "model_type": "granite"}))
    proc = python(f"from nvllm.config import detect_architecture; print(detect_architecture({tiny_llama_path!r})); "
                  f"detect_architecture({str(granite)!r})", site)
    assert proc.stdout.strip() == "llama", proc.stderr  # not a_llama, though it sorts first
    assert ("holds a model_type 'granite' model, which several architectures run: b_granite (model_type granite; "
            "plugin nvllm-b); c_granite (model_type granite; plugin nvllm-c); name the one to use") in proc.stderr


def test_load_plugins_is_idempotent():
    first = {f: registry.names(f) for f in registry.FAMILIES}
    load_plugins()
    load_plugins()
    assert {f: registry.names(f) for f in registry.FAMILIES} == first
    assert first["scheduler"] == ["fcfs"] or "fcfs" in first["scheduler"]


def test_every_hook_has_a_docstring():
    from nvllm import hookspecs

    for name in registry.FAMILIES.values():
        assert getattr(hookspecs, name).__doc__, name


def test_registering_needs_name_and_config():
    class NoConfig:
        name = "x"

    with pytest.raises(TypeError, match="needs a `Config` dataclass"):
        registry.register("scheduler", NoConfig)


def test_build_takes_a_config_a_name_or_a_dict():
    load_plugins()
    paged = registry.get("kv_cache", "paged")
    for cfg in (paged.Config(prefix_caching=False), {"name": "paged", "prefix_caching": False}):
        kv = registry.build("kv_cache", cfg, num_blocks=4, block_size=16)
        assert type(kv) is paged and kv.config == paged.Config(prefix_caching=False)
    assert registry.build("kv_cache", "paged", num_blocks=4, block_size=16).config == paged.Config()
    with pytest.raises(UnknownComponentError, match="unknown kv_cache 'nope'; valid names: .*paged"):
        registry.build("kv_cache", "nope", num_blocks=4, block_size=16)
