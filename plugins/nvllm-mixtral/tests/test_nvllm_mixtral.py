"""nvllm-mixtral: nvllm's model conformance suite, then Mixtral's greedy tokens against
transformers' through the engine's paths (prefix caching, chunked prefill, preemption, speculative
decoding, each through forward=eager and forward=fused_cpu's C step; tp=2 and expert parallelism),
its per-expert weights loaded from sharded checkpoints, and the plugin written with nvllm's public
layers only."""
import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
from nvllm.forward import fused_cpu
from nvllm.kernels import OLDER_CPUS
from nvllm.models.weights import WeightsError
from nvllm.testing import ModelSuite, hf_greedy
from nvllm.tools.checkpoint import make_random_checkpoint

MAX_NEW = 16
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
# the torch modules, and nvllm's C step (it declares fused_step_layout); a parity test runs under each
FORWARDS = ["eager", "fused_cpu"]


class TestMixtralConformance(ModelSuite):
    name = "mixtral"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """Tiny Mixtral (4 experts, top-2, two layers) in safetensors shards that split a layer's experts."""
    return make_random_checkpoint("mixtral", str(tmp_path_factory.mktemp("mixtral")), preset="tiny", seed=0,
                                  max_shard_size="60KB")


def prompts() -> list[list[int]]:
    rng = random.Random(2)
    pattern = [rng.randrange(512) for _ in range(5)]
    out = [[rng.randrange(512) for _ in range(n)] for n in (1, 7, 30, 90)] + [pattern * 5]
    return out + [out[3][:40] + [3, 1, 4]]  # prefix-cache hits on the fourth prompt's blocks


@pytest.fixture(scope="module")
def reference(checkpoint):
    return hf_greedy(checkpoint, prompts(), MAX_NEW)


def generate(path, forward, inspect=lambda engine: None, **overrides):
    """The prompts' greedy tokens under forward=`forward` (the last one in a second round, after the
    others' blocks are cached) and the engine; `inspect(engine)` is called while it is open."""
    settings = {"kv_cache": {"block_size": 8}, "max_model_len": 256, "max_num_batched_tokens": 512, **overrides}
    with LLM(path, forward=forward, **settings) as llm:
        assert llm.engine.config.model.name == "mixtral" and llm.engine.config.forward.name == forward
        inspect(llm.engine)
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompts()[:-1], GREEDY, use_tqdm=False)]
        tokens += [o.outputs[0].token_ids for o in llm.generate(prompts()[-1:], GREEDY, use_tqdm=False)]
        return tokens, llm.engine


def test_the_checkpoint_holds_per_expert_weights_across_shards(checkpoint):
    index = json.loads((Path(checkpoint) / "model.safetensors.index.json").read_text())["weight_map"]
    files = {index[f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight"]
             for e in range(4) for w in ("w1", "w2", "w3")}
    assert len(files) > 1, "one layer's experts should span several safetensors files"


@pytest.mark.parametrize("forward", FORWARDS)
def test_greedy_tokens_match_transformers_with_prefix_caching(checkpoint, reference, forward):
    tokens, engine = generate(checkpoint, forward)
    assert engine.kv_cache.num_hit_tokens > 0, "the last prompt found no prefix-cache hit"
    assert tokens == reference


def test_int8_experts_in_the_fused_step_match_transformers_on_the_round_tripped_weights(tmp_path):
    """quantization=int8 packs the router and each expert (nvllm's weight formats): the C step reads
    the packed experts and gives the tokens transformers gives on the weights they stand for."""
    from nvllm.testing.quantization import round_tripped

    path = make_random_checkpoint("mixtral", str(tmp_path / "mixtral"), preset="tiny", seed=0)
    reference = round_tripped(path, tmp_path / "round-trip", "int8")

    def packed(engine):
        assert all(layer.block_sparse_moe.w2_qweight is not None for layer in engine.executor.model.model.layers)

    tokens, _ = generate(path, "fused_cpu", packed, quantization="int8")
    assert tokens == hf_greedy(reference, prompts(), MAX_NEW)


@pytest.mark.parametrize("forward", FORWARDS)
def test_greedy_tokens_match_transformers_under_chunked_prefill_and_preemption(checkpoint, reference, forward):
    tokens, engine = generate(checkpoint, forward, scheduler="chunked", max_num_batched_tokens=24,
                              kv_cache={"block_size": 8, "num_blocks": 20})
    assert engine.scheduler.num_preemptions > 0, "the small cache preempted nothing"
    assert tokens == reference


@pytest.mark.parametrize("drafter", [{"name": "ngram", "max_num_draft_tokens": 64},
                                     {"name": "draft", "num_layers": 1, "max_num_draft_tokens": 64}],
                         ids=["ngram", "draft"])
@pytest.mark.parametrize("forward", FORWARDS)
def test_greedy_tokens_match_transformers_with_speculative_decoding(checkpoint, reference, forward, drafter):
    tokens, engine = generate(checkpoint, forward, speculative=drafter)
    stats = engine.stats.spec_decode
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens, "drafts were not both accepted and rejected"
    assert tokens == reference


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
@pytest.mark.parametrize("expert_parallel", [False, True], ids=["tp-sharded-experts", "expert-parallel"])
def test_tp2_greedy_tokens_match_transformers(checkpoint, reference, expert_parallel):
    shapes = []

    def rank0_experts(engine):
        layer = engine.executor.model.model.layers[0].block_sparse_moe
        shapes.append((layer.w13.shape[0], layer.w2.shape[2]))

    tokens, engine = generate(checkpoint, "eager", rank0_experts, tp=2, moe={"expert_parallel": expert_parallel},
                              kv_cache={"block_size": 8, "num_blocks": 24})
    # expert-parallel: experts 0-1 whole on rank 0; else all 4, each with half its intermediate dimension
    assert shapes == [(2, 32) if expert_parallel else (4, 16)]
    assert engine.scheduler.num_preemptions > 0, "the small cache preempted nothing"
    assert tokens == reference


def test_forward_auto_runs_the_fused_step_on_a_cpu(checkpoint):
    with LLM(checkpoint, max_model_len=64) as llm:
        assert llm.engine.config.forward.name == "fused_cpu"
        assert llm.engine.config.forward_choice.startswith("forward=auto chose fused_cpu")


def test_the_avx2_build_of_the_fused_step_matches_transformers(checkpoint, reference, monkeypatch):
    """nvllm's C step built without AVX-512 (as on an AVX2-only CPU), with chunked prefill and preemption."""
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", OLDER_CPUS["avx2"])
    fused_cpu.kernel.cache_clear()
    try:
        assert fused_cpu.isa() == "avx2"
        tokens, engine = generate(checkpoint, "fused_cpu", scheduler="chunked", max_num_batched_tokens=24,
                                  kv_cache={"block_size": 8, "num_blocks": 20})
    finally:
        fused_cpu.kernel.cache_clear()
    assert engine.scheduler.num_preemptions > 0, "the small cache preempted nothing"
    assert tokens == reference


def test_a_checkpoint_missing_an_expert_is_refused_naming_it(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_random_checkpoint("mixtral", str(tmp_path), preset="tiny", seed=0)
    name = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    tensors = load_file(Path(path) / "model.safetensors")
    del tensors[name]
    save_file(tensors, Path(path) / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=rf"the checkpoint has no weight '{name}', and config.json's "
                                           rf"num_local_experts=4 says"):
        LLM(path, max_model_len=64)


def test_more_experts_per_token_than_experts_is_refused(tmp_path):
    path = make_random_checkpoint("mixtral", str(tmp_path), preset="tiny", seed=0)
    config_file = Path(path) / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "num_experts_per_tok": 5}))
    with pytest.raises(ConfigError, match=r"config.json has num_experts_per_tok=5 and num_local_experts=4"):
        LLM(path, max_model_len=64)


def test_the_checkpoint_tool_writes_a_mixtral(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nvllm.tools.checkpoint", "mixtral", str(tmp_path / "m"),
                           "--preset", "tiny"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["model_type"], config["num_local_experts"], config["num_experts_per_tok"]) == ("mixtral", 4, 2)


def test_the_plugin_imports_only_nvllms_public_model_layers():
    import nvllm_mixtral

    tree = ast.parse(Path(nvllm_mixtral.__file__).read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    from_nvllm = {m for m in modules if m.split(".")[0] == "nvllm"}
    layers = {m for m in from_nvllm if m.startswith("nvllm.models.layers.")}
    assert from_nvllm - {"nvllm", "nvllm.models.base"} == layers
