"""The Triton kernels inside the engine, greedy tokens against transformers: the layers run them on
CUDA only, so here each layer's device test (`use_kernels`) is made to answer yes for CPU tensors
and the kernels run in Triton's interpreter through a whole forward=eager generate: quantization=int8
and int4 (every packed linear layer's matmul) against transformers on the weights the format stands
for, and tiny Qwen3-MoE and Mixtral models (every MoE layer's fused step) against transformers,
Qwen3-MoE also with int8 and int4 experts (on the weights they stand for)."""
import random

import pytest

from nvllm import LLM, SamplingParams
from nvllm.models.layers import linear, moe
from nvllm.testing.quantization import dequantized_weights, round_tripped, with_weights
from nvllm.tools.checkpoint import make_random_checkpoint
from tests.attention.conftest import triton_kernels
from tests.conftest import hf_greedy

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """Every packed linear layer and MoE layer runs its Triton kernels (interpreted); the calls, counted."""
    triton_kernels("cpu")
    calls = []

    def use_kernels(x):
        calls.append(x.shape)
        return True

    monkeypatch.setattr(linear, "use_kernels", use_kernels)
    monkeypatch.setattr(moe, "use_kernels", use_kernels)
    return calls


def prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(1, vocab) for _ in range(n)] for n in (1, 6, 21)]


@pytest.fixture(scope="module")
def unit_llama(tmp_path_factory) -> str:
    """Tiny Llama with weights under which every linear layer moves the tokens (init="unit")."""
    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("unit-llama")), preset="tiny", init="unit")


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_greedy_tokens_equal_transformers_on_the_dequantized_weights(kernels_on_cpu, fmt, unit_llama,
                                                                               tmp_path):
    with LLM(unit_llama, quantization=fmt, forward="eager", max_model_len=64) as llm:
        got = [o.outputs[0].token_ids for o in llm.generate(prompts(512), GREEDY, use_tqdm=False)]
        runner = llm.engine.executor
        weights = dequantized_weights(runner.model, runner.hf_config)
    assert kernels_on_cpu, "no packed linear layer ran its kernel"
    assert got == hf_greedy(with_weights(unit_llama, tmp_path / "dequantized", weights), prompts(512), 8)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])  # mixtral: the plugin package's model
def test_moe_greedy_tokens_equal_transformers(kernels_on_cpu, arch, tmp_path):
    path = make_random_checkpoint(arch, str(tmp_path), preset="tiny", seed=0)
    with LLM(path, forward="eager", max_model_len=64) as llm:
        got = [o.outputs[0].token_ids for o in llm.generate(prompts(512), GREEDY, use_tqdm=False)]
    assert kernels_on_cpu, "no MoE layer ran its kernels"
    assert got == hf_greedy(path, prompts(512), 8)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_moe_greedy_tokens_equal_transformers_on_the_round_tripped_weights(kernels_on_cpu, fmt, tmp_path):
    """quantization=int8 and int4 on tiny Qwen3-MoE: the router through the weight-only matmul, the
    packed experts through the fused MoE's kernels, against transformers on the dequantized weights."""
    path = make_random_checkpoint("qwen3_moe", str(tmp_path / "moe"), preset="tiny", seed=0)
    with LLM(path, quantization=fmt, forward="eager", max_model_len=64) as llm:
        assert llm.engine.executor.model.model.layers[1].mlp.w13 is None  # packed
        got = [o.outputs[0].token_ids for o in llm.generate(prompts(512), GREEDY, use_tqdm=False)]
    assert kernels_on_cpu, "no MoE layer ran its kernels"
    assert got == hf_greedy(round_tripped(path, tmp_path / "round-trip", fmt), prompts(512), 8)
