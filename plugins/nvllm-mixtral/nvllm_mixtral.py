"""nvllm-mixtral: Mixtral (Mixtral-8x7B, 8x22B) as an nvllm model plugin, written from outside nvllm
with its public layers only. Each layer: Llama's attention (no biases, no QK-norm), then a sparse
mixture of experts (`block_sparse_moe`): softmax over `num_local_experts`, the top
`num_experts_per_tok` renormalised, their SwiGLU experts (`w1` gate, `w3` up, `w2` down) summed."""
from dataclasses import dataclass

from torch import nn

from nvllm import hookimpl
from nvllm.models.base import CausalLM, ModelConfig
from nvllm.models.layers.decoder import DecoderAttention
from nvllm.models.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from nvllm.models.layers.moe import FusedMoE
from nvllm.models.layers.norm import RMSNorm


class MixtralDecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = DecoderAttention(cfg, qkv_bias=False, qk_norm=False)  # no biases, no QK-norm
        # Mixtral's scores stay float32 when they weight the experts' outputs (transformers' MixtralTopKRouter)
        self.block_sparse_moe = FusedMoE(cfg.num_local_experts, cfg.num_experts_per_tok, cfg.hidden_size,
                                         cfg.intermediate_size, renormalize=True, scores_in_float32=True)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, hidden_states, residual):
        if residual is None:
            hidden_states, residual = self.input_layernorm(hidden_states), hidden_states
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.block_sparse_moe(hidden_states), residual


class MixtralModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(MixtralDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, positions, num_layers: int | None = None):
        hidden_states, residual = self.embed_tokens(input_ids), None
        for layer in self.layers[:num_layers]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class MixtralForCausalLM(CausalLM):
    """Mixtral: a sparse mixture of experts in every layer (plugin nvllm-mixtral)."""

    name = "mixtral"
    hf_model_types = ("mixtral",)
    hf_config_class = "MixtralConfig"
    # forward=fused_cpu's C step computes these layers: Llama's attention, then `block_sparse_moe`, a FusedMoE
    fused_step_layout = "llama"
    packed_modules_mapping = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}
    expert_weights_mapping = {"w1": ("w13", 0), "w3": ("w13", 1), "w2": ("w2", 0)}
    moe_keys = ("num_local_experts", "intermediate_size")
    random_presets = {
        # 4 experts, 2 chosen per token; weights 5x transformers' default scale, so the router's
        # scores are far from uniform and which experts a token picks changes greedy tokens
        "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=1024, tie_word_embeddings=False, rope_theta=1000000.0,
                     sliding_window=None, initializer_range=0.1),
        "mixtral-8x7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_local_experts=8,
                             num_experts_per_tok=2, num_hidden_layers=32, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                             tie_word_embeddings=False, rope_theta=1000000.0, sliding_window=None),
    }

    @dataclass
    class Config(ModelConfig):
        name: str = "mixtral"

    def __init__(self, hf_config):
        super().__init__()
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {hf_config.hidden_act!r} is not supported (silu is)")
        if getattr(hf_config, "sliding_window", None) is not None:
            raise NotImplementedError(f"sliding_window={hf_config.sliding_window} is not supported: nvllm attends "
                                      f"over the whole context (Mixtral-8x7B's config.json has sliding_window null)")
        self.model = MixtralModel(hf_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        if getattr(hf_config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, positions, num_layers: int | None = None):
        """Hidden states after the final norm; `num_layers`: after only the first layers (the early
        exit speculative=draft drafts with)."""
        return self.model(input_ids, positions, num_layers)

    def compute_logits(self, hidden_states):
        return self.lm_head(hidden_states)


@hookimpl
def register_models(register):
    register(MixtralForCausalLM)
