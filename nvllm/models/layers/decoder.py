"""The attention block of a Llama-family decoder layer (Llama, Qwen2/3, Mixtral, Qwen3-MoE): fused
q/k/v projection, optional QK-norm, rotary embeddings, paged attention through the run's backend,
output projection. A model plugin whose layers attend this way builds it instead of copying it."""
import torch
from torch import nn

from nvllm.models.layers.attention import Attention
from nvllm.models.layers.linear import QKVParallelLinear, RowParallelLinear
from nvllm.models.layers.norm import RMSNorm
from nvllm.models.layers.rotary import RotaryEmbedding, rope_parameters


class DecoderAttention(nn.Module):
    def __init__(self, cfg, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, head_dim, cfg.num_attention_heads,
                                          cfg.num_key_value_heads, bias=qkv_bias)
        self.num_heads, self.num_kv_heads, self.head_dim = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, head_dim
        # attention_bias covers o_proj too (Llama, Qwen3); Qwen2 biases q/k/v only
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * head_dim, cfg.hidden_size,
                                        bias=getattr(cfg, "attention_bias", False))
        theta, scaling = rope_parameters(cfg)
        self.rotary_emb = RotaryEmbedding(head_dim, cfg.max_position_embeddings, theta, scaling)
        self.attn = Attention(self.num_heads, head_dim, self.num_kv_heads, head_dim ** -0.5)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, cfg.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden_states).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v).flatten(1))
