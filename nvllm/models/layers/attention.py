import torch
from torch import nn

from nvllm.attention.base import get_context


class Attention(nn.Module):
    """Hands q/k/v to the step's attention backend; the model runner assigns this layer's cache."""

    def __init__(self, num_heads: int, head_dim: int, num_kv_heads: int, scale: float):
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads, self.scale = num_heads, head_dim, num_kv_heads, scale
        self.k_cache = self.v_cache = torch.tensor([])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx = get_context()
        return ctx.backend.forward(q, k, v, self.k_cache, self.v_cache, ctx.meta, self.scale)
