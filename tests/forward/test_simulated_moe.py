"""The simulation's cost model of a mixture of experts: active against total parameters, the experts a
step's tokens touch, tensor against expert parallelism. The shapes are the published config.json
numbers of Qwen3-30B-A3B and Mixtral-8x7B, as transformers configs."""
import math

import pytest
from transformers import MixtralConfig, Qwen3MoeConfig

from nvllm import registry
from nvllm.errors import ConfigError
from nvllm.plugins import load_plugins
from nvllm.simulation.cost import ModelDims, RooflineCost, StepShape, expected_max_normal
from nvllm.simulation.hardware import hardware

# config.json of Qwen/Qwen3-30B-A3B and mistralai/Mixtral-8x7B-v0.1 (the fields a shape needs)
QWEN3_30B_A3B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                     num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, num_hidden_layers=48,
                     num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=40960,
                     tie_word_embeddings=False, rope_theta=1000000.0)
MIXTRAL_8X7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                    num_experts_per_tok=2, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=128, max_position_embeddings=32768, tie_word_embeddings=False, rope_theta=1000000.0,
                    rms_norm_eps=1e-5)
QWEN3 = ModelDims.of(Qwen3MoeConfig(**QWEN3_30B_A3B))
MIXTRAL = ModelDims.of(MixtralConfig(**MIXTRAL_8X7B))
H200 = hardware("h200")


def test_active_against_total_parameters():
    # the models' own figures: Qwen3-30B-A3B 30.5B (3.3B activated), Mixtral-8x7B 46.7B (12.9B active)
    assert (QWEN3.experts, QWEN3.experts_per_tok, QWEN3.expert_intermediate, QWEN3.sparse_layers) == (128, 8, 768, 48)
    assert QWEN3.params / 1e9 == pytest.approx(30.5, abs=0.05) and QWEN3.active_params / 1e9 == pytest.approx(3.35, abs=0.05)
    assert (MIXTRAL.experts, MIXTRAL.experts_per_tok, MIXTRAL.expert_intermediate, MIXTRAL.sparse_layers) == (8, 2, 14336, 32)
    assert MIXTRAL.params / 1e9 == pytest.approx(46.7, abs=0.05) and MIXTRAL.active_params / 1e9 == pytest.approx(12.9, abs=0.05)
    experts = QWEN3.sparse_layers * QWEN3.expert_params
    assert QWEN3.params - QWEN3.active_params == (QWEN3.experts - QWEN3.experts_per_tok) * experts


def test_dense_layers_of_a_qwen3_moe():
    dims = ModelDims.of(Qwen3MoeConfig(**{**QWEN3_30B_A3B, "mlp_only_layers": [0, 1], "decoder_sparse_step": 2}))
    assert dims.sparse_layers == 23  # layers 3, 5, ..., 47 (1 is listed dense)
    mlp = 3 * dims.hidden
    assert dims.params - QWEN3.params == 25 * mlp * dims.intermediate - 25 * (128 * mlp * 768 + dims.hidden * 128)


def test_a_dense_model_is_unchanged():
    from transformers import Qwen3Config

    dense = ModelDims.of(Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    assert dense.active_params == dense.params and dense.experts_touched(64) == 0
    assert "experts" not in dense.as_dict()  # profiles of dense models recorded their dims without them
    assert QWEN3.as_dict()["experts"] == 128


def test_experts_touched_grow_from_k_to_all():
    for dims in (QWEN3, MIXTRAL):
        k, e = dims.experts_per_tok, dims.experts
        assert dims.experts_touched(1) == pytest.approx(k)
        assert dims.experts_touched(0) == 0
        counts = [dims.experts_touched(b) for b in (1, 2, 4, 8, 16, 64, 256, 4096)]
        assert counts == sorted(counts) and counts[-1] == pytest.approx(e)
        assert dims.experts_touched(2) == pytest.approx(e * (1 - (1 - k / e) ** 2))
    assert MIXTRAL.experts_touched(2) == pytest.approx(3.5)  # two tokens of top-2 of 8: 8 (1 - (3/4)^2)


def decode(batch: int) -> StepShape:
    return StepShape.synthetic([], [0] * batch)


def test_a_decode_step_reads_the_touched_experts():
    cost = RooflineCost(QWEN3, H200, "bfloat16")
    bandwidth = H200.memory_bandwidth * H200.bandwidth_efficiency
    one = cost.step_seconds(decode(1))
    # one token reads the shared weights and its 8 experts per layer: the active parameters
    assert one == pytest.approx(QWEN3.active_params * 2 / bandwidth + QWEN3.kv_bytes_per_token(2) / bandwidth
                                + 4.4e-5 + 7.3e-6, rel=1e-6)
    # a large batch reads nearly every expert: the total parameters
    big = cost.step_seconds(decode(512)) - cost.step_seconds(decode(511))
    assert big < one / 100
    assert cost.step_seconds(decode(512)) > QWEN3.params * 2 / bandwidth
    # eight tokens: the experts they touch between them (about 52 of 128 per layer, not 8 x 8 = 64)
    weights = QWEN3.active_params + QWEN3.sparse_layers * (QWEN3.experts_touched(8) - 8) * QWEN3.expert_params
    assert cost.step_seconds(decode(8)) == pytest.approx(
        (weights * 2 + 8 * QWEN3.kv_bytes_per_token(2)) / bandwidth + 4.4e-5 + 8 * 7.3e-6, rel=1e-6)


def test_expert_parallel_costs_the_busiest_rank():
    tp, ep = RooflineCost(QWEN3, H200, "bfloat16", tp=4), RooflineCost(QWEN3, H200, "bfloat16", tp=4, expert_parallel=True)
    for batch in (1, 4, 16, 64, 1024):
        assert ep.step_seconds(decode(batch)) >= tp.step_seconds(decode(batch))
    # one token's 8 experts on 4 ranks of 32: 2 on average, the busiest more
    read, routed = ep.experts_read(1)
    assert 2 < read < 8 and 2 < routed <= 8
    assert tp.experts_read(1) == (pytest.approx(2), pytest.approx(2))
    # once every expert is touched each rank reads all of its own: balanced, as tp is
    assert ep.experts_read(4096)[0] == pytest.approx(32) == tp.experts_read(4096)[0]
    gap = [ep.step_seconds(decode(b)) / tp.step_seconds(decode(b)) for b in (1, 4096)]
    assert gap[0] > gap[1] == pytest.approx(1, abs=0.01)
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-4)


@pytest.mark.parametrize("dims, tp, error", [
    (MIXTRAL, 3, "the model's 8 experts do not divide by 3: use tp in [1, 2, 4, 8]"),
    (QWEN3, 6, "the model's 128 experts do not divide by 6: use tp in [1, 2, 4, 8, 16, 32, 64]"),
])
def test_expert_parallel_refuses_experts_that_do_not_divide(dims, tp, error):
    with pytest.raises(ConfigError, match=r"moe\.expert_parallel=true places whole experts on each of tp=%d ranks, and %s"
                                          % (tp, error.replace("[", r"\[").replace("]", r"\]"))):
        RooflineCost(dims, H200, "bfloat16", tp=tp, expert_parallel=True)
    RooflineCost(dims, H200, "bfloat16", tp=tp)  # tensor parallelism splits each expert's width instead


def test_expert_parallel_needs_experts():
    from transformers import Qwen3Config

    dense = ModelDims.of(Qwen3Config(**{k: v for k, v in QWEN3_30B_A3B.items() if "expert" not in k and k != "norm_topk_prob"}))
    with pytest.raises(ConfigError, match="has none; drop moe.expert_parallel"):
        RooflineCost(dense, H200, "bfloat16", tp=2, expert_parallel=True)


@pytest.mark.parametrize("arch, preset, fields", [("qwen3_moe", "qwen3-30b-a3b", QWEN3_30B_A3B),
                                                  ("mixtral", "mixtral-8x7b", MIXTRAL_8X7B)])
def test_the_architectures_shape_presets_are_the_published_configs(arch, preset, fields):
    """model.shape=qwen3-30b-a3b / mixtral-8x7b, where the architecture is registered (built in, or
    the nvllm-mixtral package installed)."""
    import transformers

    load_plugins()
    if arch not in registry.names("model"):
        pytest.skip(f"model={arch} is not registered here")
    cls = registry.get("model", arch)
    assert preset in cls.random_presets, f"model={arch} has no shape {preset}"
    shape = cls.random_presets[preset]
    defaults = getattr(transformers, cls.hf_config_class)(**shape)  # what the preset leaves to the config class
    assert {k: shape[k] if k in shape else getattr(defaults, k) for k in fields} == fields
