"""Every option of every config group composes, and its component builds."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore

from nvllm import registry
from nvllm.config import Config, setup, typed_config
from nvllm.workloads import build_requests

setup()


def options(group: str) -> list[str]:
    """Options from both sources Hydra searches: conf/<group>/*.yaml and the ConfigStore."""
    conf = Path(__import__("nvllm.conf", fromlist=["x"]).__file__).parent / group
    names = {p.stem for p in conf.glob("*.yaml")}
    names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().repo.get(group, {})}
    return sorted(names)


def compose_with(*overrides):
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


ALL = [(g, o) for g in registry.FAMILIES for o in options(g)]


def test_every_family_has_options():
    for group in registry.FAMILIES:
        assert options(group), group


@pytest.mark.parametrize("group, option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_option_composes_and_builds(group, option, tiny_qwen3_path, tmp_path):
    cfg = compose_with(f"{group}={option}")
    if group == "workload":
        if cfg.workload.name == "file":
            cfg.workload.path = str(tmp_path / "prompts.txt")
            (tmp_path / "prompts.txt").write_text("hello\nworld\n")
            cfg.workload.chat = False
        if cfg.workload.name == "trace":
            cfg.workload.path = str(tmp_path / "trace.jsonl")
            (tmp_path / "trace.jsonl").write_text('{"arrival": 0, "input_len": 4, "output_len": 2}\n')
        if cfg.workload.name == "sharegpt":
            cfg.workload.path = str(tmp_path / "sharegpt.json")
            turns = [{"from": "human", "value": "Tell me about the sea, please."},
                     {"from": "gpt", "value": "The sea is large, salty and deep."}]
            (tmp_path / "sharegpt.json").write_text(json.dumps([{"conversations": turns}]))
            prompts, params = build_requests(cfg.workload, cfg.sampling, _tokenizer())
            assert prompts == [turns[0]["value"]] and params[0].max_tokens == len(_tokenizer().encode(turns[1]["value"]))
            return
    Config.from_cfg(cfg)
    if group == "workload":
        prompts, params = build_requests(cfg.workload, cfg.sampling, tokenizer=None) if cfg.workload.name not in ("chat", "grounded") \
            else build_requests(cfg.workload, cfg.sampling, _tokenizer())
        assert prompts and len(prompts) == len(params)
        return
    if group == "attention" and option == "auto":  # resolved when the engine starts, by the backends' checks
        from nvllm.attention.select import select_backend

        typed, _ = select_backend(cfg[group], torch.device("cpu"), torch.float32, 16)
    elif group == "forward" and option == "auto":  # resolved when the engine starts, by the strategies' checks
        typed, _ = Config.from_cfg(cfg)._forward(cpu_target())
    else:
        typed = typed_config(group, cfg[group])
    assert typed.name in registry.names(group)
    cls = registry.get(group, typed.name)
    if group == "model":
        assert cls.hf_model_types
    elif group == "kv_cache":
        kv = registry.build(group, typed, num_blocks=8, block_size=typed.block_size)
        assert kv.num_free_blocks == 8
    elif group == "scheduler":
        kv = registry.build("kv_cache", typed_config("kv_cache", compose_with().kv_cache), num_blocks=8, block_size=16)
        registry.build(group, typed, kv_cache=kv, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
                       eos_token_ids=frozenset({0}))
    elif group == "attention":
        if option == "flash_attn" and not torch.cuda.is_available():  # refused on a CPU, by design
            from nvllm.config import ConfigError

            with pytest.raises(ConfigError, match="needs a CUDA device"):
                registry.build(group, typed, device=torch.device("cpu"), dtype=torch.float32)
            return
        registry.build(group, typed, device=torch.device("cpu"), dtype=torch.float32)
    elif group == "sampler":
        registry.build(group, typed, device=torch.device("cpu"))
    elif group == "forward":  # built by the model runner: tests/test_conformance.py builds each one
        if option == "cudagraph" and not torch.cuda.is_available():  # refused on a CPU, by design
            from nvllm.config import ConfigError

            with pytest.raises(ConfigError, match="need a CUDA device"):
                cls.check(cpu_target())
            return
        cls.check(cpu_target())


def cpu_target():
    from nvllm.forward.base import ForwardTarget

    return ForwardTarget(torch.device("cpu"), torch.float32, 1, registry.get("model", "llama"), "cpu", False)


def _tokenizer():
    from transformers import AutoTokenizer

    from nvllm.models.weights import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


def test_random_workload_is_seeded():
    cfg = compose_with("workload=random", "workload.num_seqs=8")
    a, pa = build_requests(cfg.workload, cfg.sampling, None)
    b, pb = build_requests(cfg.workload, cfg.sampling, None)
    assert a == b and [p.max_tokens for p in pa] == [p.max_tokens for p in pb]
    assert all(100 <= len(p) <= 1024 and max(p) < 10000 for p in a)
    assert all(p.ignore_eos and 100 <= p.max_tokens <= 1024 for p in pa)
    c, _ = build_requests(compose_with("workload=random", "workload.num_seqs=8", "workload.seed=1").workload,
                          cfg.sampling, None)
    assert c != a


@pytest.mark.slow  # --help in fresh processes
def test_help_lists_every_group_and_option(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nvllm.run", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    for group, option in ALL:
        assert f"{group}: " in out
        assert option in out.split(f"{group}: ", 1)[1].splitlines()[0], (group, option)


@pytest.mark.parametrize("override", ["compile=maybe", "max_num_seqs=abc", "tp=1.5", "sampling.max_tokens=abc",
                                      "kv_cache.block_size=big"])
def test_switches_are_typed_at_composition(override):
    """The schema (nvllm_schema in the ConfigStore) refuses a value of the wrong type, naming the key."""
    key, value = override.split("=")
    with pytest.raises(Exception) as e:
        compose_with(override)
    message = f"{e.value} {e.value.__cause__}"
    assert f"full_key: {key}" in message and value in message


@pytest.mark.parametrize("override, says", [
    ("cudagraph=maybe", "cudagraph='maybe' is not allowed: use auto, true or false"),
    ("async_scheduling=sometimes", "async_scheduling='sometimes' is not allowed: use auto, true or false"),
    ("max_num_seqs=0", "max_num_seqs=0 is not allowed: it must be an integer >= 1"),
    ("dtype=float8", "dtype='float8' is not allowed"),
    ("scheduler=chunked scheduler.max_chunk=-1", "scheduler.max_chunk=-1 is not allowed"),
    ("kv_cache.block_size=0", "kv_cache.block_size must be positive"),
])
def test_out_of_range_values_are_refused_naming_key_and_value(override, says):
    from nvllm.config import Config, ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        Config.from_cfg(compose_with(*override.split()))


def test_python_overrides_are_typed_too():
    from nvllm.config import ConfigError, compose

    with pytest.raises(ConfigError, match="full_key: max_num_seqs"):
        compose(max_num_seqs="abc")


def test_resolving_a_config_without_a_dtype_logs_no_deprecation():
    """A config.json without a dtype (a model.shape) resolves dtype=auto without reading
    transformers' deprecated `torch_dtype`, whose warning would end up in every such run."""
    import logging

    from nvllm.models.weights import load_hf_config, shape_path

    hf_config = load_hf_config(shape_path("llama", "tiny"))
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: let it warn again
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        config = Config.from_cfg(compose_with("model=llama", "model.shape=tiny")).resolve(hf_config)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert config.dtype == "float32"
    assert not [r.getMessage() for r in records if "deprecated" in r.getMessage()]
