"""Each architecture variant matches Hugging Face greedy tokens on its own (random) weights."""
import random

import pytest

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
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


def test_an_unknown_architecture_is_refused_naming_it_and_the_models_here(tmp_path):
    import json

    path = make_random_checkpoint("llama", str(tmp_path), preset="tiny")
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"holds a model_type 'deepseek_v3' model \(architectures: "
                                          r"DeepseekV3ForCausalLM\), which no registered architecture runs. The models "
                                          r"here: llama \(model_type llama\); .*qwen3_moe \(model_type qwen3_moe\)"):
        LLM(path)
    with pytest.raises(ConfigError, match=r"holds a 'deepseek_v3' model, which model=llama does not run \(it runs "
                                          r"llama\); no registered architecture does. The models here: llama"):
        LLM({"name": "llama", "path": path})
    with pytest.raises(ConfigError, match=r"holds a 'qwen3_moe' model, which model=qwen3 does not run \(it runs "
                                          r"qwen3, qwen2\); model=qwen3_moe runs it"):
        LLM({"name": "qwen3", "path": make_random_checkpoint("qwen3_moe", str(tmp_path / "moe"), preset="tiny")})


def test_unsupported_rope_type_is_refused(tmp_path):
    path = make_random_checkpoint("llama", str(tmp_path), rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(NotImplementedError, match="rope_type 'yarn' is not supported"):
        LLM(path)
