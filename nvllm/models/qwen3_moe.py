"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's decoder with a mixture of experts in place
of the MLP, except in the layers listed in `mlp_only_layers` or off the `decoder_sparse_step`
stride, which keep a dense one."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.models.base import ModelConfig
from nvllm.models.layers.moe import FusedMoE
from nvllm.models.llama import DecoderMLP, LlamaForCausalLM


def is_sparse(cfg, layer: int) -> bool:
    """Qwen3-MoE's rule (transformers' Qwen3MoeDecoderLayer): experts unless the layer is listed in
    mlp_only_layers or off the decoder_sparse_step stride."""
    return (layer not in (cfg.mlp_only_layers or []) and cfg.num_experts > 0
            and (layer + 1) % cfg.decoder_sparse_step == 0)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    name = "qwen3_moe"
    hf_model_types = ("qwen3_moe",)
    hf_config_class = "Qwen3MoeConfig"
    fused_step_layout = "llama"  # forward=fused_cpu's C step: Qwen3's layers, its experts or dense MLP in each
    expert_weights_mapping = {"gate_proj": ("w13", 0), "up_proj": ("w13", 1), "down_proj": ("w2", 0)}
    moe_keys = ("num_experts", "moe_intermediate_size")
    random_presets = {
        # layer 0 dense (mlp_only_layers), layers 1-2 with 8 experts, 2 chosen per token; weights 5x
        # transformers' default scale, so the router's scores are far from uniform and which experts a
        # token picks, and their weights, change greedy tokens (a parity test can fail)
        "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                     num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[0],
                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=1024, tie_word_embeddings=False, rope_theta=1000000.0,
                     initializer_range=0.1),
        "qwen3-30b-a3b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                              num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, num_hidden_layers=48,
                              num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                              max_position_embeddings=40960, tie_word_embeddings=False, rope_theta=1000000.0),
    }

    @dataclass
    class Config(ModelConfig):
        name: str = "qwen3_moe"
        hf_repo: str | None = "Qwen/Qwen3-30B-A3B"

    def __init__(self, hf_config):
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {hf_config.hidden_act!r} is not supported (silu is)")
        if getattr(hf_config, "sliding_window", None) is not None:
            raise NotImplementedError(f"sliding_window={hf_config.sliding_window} (use_sliding_window=true) is not "
                                      f"supported: nvllm attends over the whole context")

        def mlp(layer: int):
            if not is_sparse(hf_config, layer):
                return DecoderMLP(hf_config)
            return FusedMoE(hf_config.num_experts, hf_config.num_experts_per_tok, hf_config.hidden_size,
                            hf_config.moe_intermediate_size, renormalize=hf_config.norm_topk_prob)

        super().__init__(hf_config, qkv_bias=getattr(hf_config, "attention_bias", False), qk_norm=True, mlp=mlp)


@hookimpl
def register_models(register):
    register(Qwen3MoeForCausalLM)
