"""Each architecture variant matches Hugging Face greedy tokens on its own (random) weights."""
import random

import pytest

from nvllm import LLM, SamplingParams
from nvllm.tools.checkpoint import make_random_checkpoint
from tests.conftest import hf_greedy

VARIANTS = {
    "llama": dict(arch="llama"),
    "llama-bias": dict(arch="llama", attention_bias=True, mlp_bias=True),
    "llama3-rope-scaling": dict(arch="llama", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "qwen3": dict(arch="qwen3"),
    "qwen2": dict(arch="qwen3", hf_config_class="Qwen2Config"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_transformers(variant, tmp_path):
    spec = dict(VARIANTS[variant])
    path = make_random_checkpoint(spec.pop("arch"), str(tmp_path), preset="tiny", seed=3, **spec)
    rng = random.Random(1)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 7, 30, 90)]
    want = hf_greedy(path, prompts, 16)
    with LLM(path, kv_cache={"block_size": 16}, max_model_len=256, max_num_batched_tokens=512) as llm:
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == want


def test_unsupported_rope_type_is_refused(tmp_path):
    path = make_random_checkpoint("llama", str(tmp_path), rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(NotImplementedError, match="rope_type 'yarn' is not supported"):
        LLM(path)
