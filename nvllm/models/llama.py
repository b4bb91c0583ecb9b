"""Llama-family decoder (SmolLM2, Llama 2/3). Qwen3 reuses it with QK-norm and biases."""
from dataclasses import dataclass

import torch
from torch import nn

from nvllm.hookspecs import hookimpl
from nvllm.models.base import CausalLM, ModelConfig
from nvllm.models.layers.activation import SiluAndMul
from nvllm.models.layers.decoder import DecoderAttention
from nvllm.models.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from nvllm.models.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from nvllm.models.layers.norm import RMSNorm


class DecoderMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {cfg.hidden_act!r} is not supported (silu is)")
        bias = getattr(cfg, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=bias, what="intermediate_size")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, qkv_bias: bool, qk_norm: bool, mlp: nn.Module | None = None):
        super().__init__()
        self.self_attn = DecoderAttention(cfg, qkv_bias, qk_norm)
        self.mlp = DecoderMLP(cfg) if mlp is None else mlp
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, hidden_states, residual):
        if residual is None:
            hidden_states, residual = self.input_layernorm(hidden_states), hidden_states
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg, qkv_bias: bool, qk_norm: bool, mlp=None):
        """`mlp(layer_index)`: each layer's MLP module (a mixture of experts' layers); None: DecoderMLP."""
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, qkv_bias, qk_norm, mlp and mlp(i))
                                    for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, positions, num_layers: int | None = None):
        hidden_states, residual = self.embed_tokens(input_ids), None
        for layer in self.layers[:num_layers]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(CausalLM):
    name = "llama"
    hf_model_types = ("llama",)
    hf_config_class = "LlamaConfig"
    fused_step_layout = "llama"  # forward=fused_cpu's C step computes exactly these modules
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }
    random_presets = {
        "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                     tie_word_embeddings=True, rope_theta=10000.0),
        "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                             max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0),
        "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                           max_position_embeddings=8192, tie_word_embeddings=False, rope_theta=500000.0),
        "llama-3-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                            num_attention_heads=64, num_key_value_heads=8, head_dim=128,
                            max_position_embeddings=8192, tie_word_embeddings=False, rope_theta=500000.0),
    }

    @dataclass
    class Config(ModelConfig):
        name: str = "llama"

    def __init__(self, hf_config, qkv_bias: bool | None = None, qk_norm: bool = False, mlp=None):
        super().__init__()
        if qkv_bias is None:
            qkv_bias = getattr(hf_config, "attention_bias", False)
        self.model = DecoderModel(hf_config, qkv_bias, qk_norm, mlp)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        if getattr(hf_config, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, positions, num_layers: int | None = None):
        """Hidden states after the final norm; `num_layers`: after only the first layers (an early
        exit, which speculative=draft drafts with)."""
        return self.model(input_ids, positions, num_layers)

    def compute_logits(self, hidden_states):
        return self.lm_head(hidden_states)


@hookimpl
def register_models(register):
    register(LlamaForCausalLM)
