"""Pure-torch attention over the paged cache with `scaled_dot_product_attention`; CPU and CUDA."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nvllm.attention.base import AttentionBackend, AttentionMetadata, store_kvcache
from nvllm.hookspecs import hookimpl


class SDPABackend(AttentionBackend):
    name = "sdpa"

    @dataclass
    class Config:
        name: str = "sdpa"

    def prepare(self, meta: AttentionMetadata, block_size: int):
        """Gather indices into the flat cache and masks, built once per step for all layers."""
        max_len = max(meta.context_lens_host)
        pos = torch.arange(max_len, device=meta.block_tables.device)
        blocks = meta.block_tables[:, pos // block_size].clamp(min=0).long()
        meta.extra["gather"] = blocks * block_size + pos % block_size  # [batch, max_len]
        if meta.is_decode:
            meta.extra["mask"] = (pos[None, :] < meta.context_lens[:, None])[:, None, None, :]
        else:
            masks = []
            for q_len, ctx_len in zip(meta.query_lens, meta.context_lens_host):
                if q_len == ctx_len:
                    masks.append(None)  # nothing cached before: plain causal on this step's K/V
                else:
                    q_pos = torch.arange(ctx_len - q_len, ctx_len, device=pos.device)
                    masks.append(pos[None, :ctx_len] <= q_pos[:, None])
            meta.extra["masks"] = masks

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        k_flat = k_cache.view(-1, *k_cache.shape[2:])
        v_flat = v_cache.view(-1, *v_cache.shape[2:])
        gather = meta.extra["gather"]
        if meta.is_decode:
            keys = k_flat[gather].transpose(1, 2)  # [batch, kv_heads, max_len, head_dim]
            values = v_flat[gather].transpose(1, 2)
            o = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=meta.extra["mask"],
                                               scale=scale, enable_gqa=True)
            return o.squeeze(2)
        out, start = [], 0
        for b, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens_host)):
            qb = q[start:start + q_len].transpose(0, 1)
            mask = meta.extra["masks"][b]
            if mask is None:
                kb, vb = k[start:start + q_len].transpose(0, 1), v[start:start + q_len].transpose(0, 1)
            else:
                kb, vb = k_flat[gather[b, :ctx_len]].transpose(0, 1), v_flat[gather[b, :ctx_len]].transpose(0, 1)
            out.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=mask is None,
                                                      scale=scale, enable_gqa=True).transpose(0, 1))
            start += q_len
        return torch.cat(out)


@hookimpl
def register_attention_backends(register):
    register(SDPABackend)
