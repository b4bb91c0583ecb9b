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
        """Block ids to gather and masks, built once per step for all layers. Whole blocks are
        gathered (long contiguous copies), not single token slots."""
        meta.extra["blocks"] = meta.block_tables.clamp(min=0).long()  # -1 padding reads block 0, masked
        if meta.is_decode:  # static shapes from the tensors alone, so CUDA graphs can capture this
            pos = torch.arange(meta.block_tables.shape[1] * block_size, device=meta.block_tables.device)
            meta.extra["mask"] = (pos[None, :] < meta.context_lens[:, None])[:, None, None, :]
            return
        masks = []
        for q_len, ctx_len in zip(meta.query_lens, meta.context_lens_host):
            if q_len == ctx_len:
                masks.append(None)  # nothing cached before: plain causal on this step's K/V
            else:
                pos = torch.arange(ctx_len, device=meta.block_tables.device)
                masks.append(pos[None, :] <= pos[ctx_len - q_len:, None])
        meta.extra["masks"] = masks

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        blocks = meta.extra["blocks"]
        num_kv_heads, head_dim = k.shape[1:]
        if meta.is_decode:
            batch = q.shape[0]
            keys = k_cache[blocks].view(batch, -1, num_kv_heads, head_dim).transpose(1, 2)
            values = v_cache[blocks].view(batch, -1, num_kv_heads, head_dim).transpose(1, 2)
            # the query heads sharing a KV head become that head's query rows: no K/V repeat
            grouped = q.view(batch, num_kv_heads, -1, head_dim)
            o = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=meta.extra["mask"], scale=scale)
            return o.view(q.shape)
        out, start = [], 0
        for b, (q_len, ctx_len) in enumerate(zip(meta.query_lens, meta.context_lens_host)):
            # [1, heads, tokens, head_dim]: with a batch dimension the CPU takes its flash kernel,
            # without one its slow reference path
            qb = q[start:start + q_len].transpose(0, 1)[None]
            mask = meta.extra["masks"][b]
            if mask is None:
                kb, vb = k[start:start + q_len].transpose(0, 1)[None], v[start:start + q_len].transpose(0, 1)[None]
            else:
                used = blocks[b, :-(-ctx_len // k_cache.shape[1])]
                kb = k_cache[used].view(-1, num_kv_heads, head_dim)[:ctx_len].transpose(0, 1)[None]
                vb = v_cache[used].view(-1, num_kv_heads, head_dim)[:ctx_len].transpose(0, 1)[None]
            out.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=mask is None,
                                                      scale=scale, enable_gqa=True)[0].transpose(0, 1))
            start += q_len
        return torch.cat(out)


@hookimpl
def register_attention_backends(register):
    register(SDPABackend)
