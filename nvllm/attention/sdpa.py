"""Pure-torch attention over the paged cache with `scaled_dot_product_attention`; CPU and CUDA.

SDPA wants each sequence's keys in one tensor, so decode gathers the blocks of the block table
into a padded [batch, width, kv_heads, head_dim] copy and masks what lies past each context. The
width is the block table's: in an eager step the model runner pads tables only to the step's
longest sequence, so the copy covers the longest context, no more. A captured CUDA graph cannot
have data-dependent shapes: there the table has the graph's static width (max_model_len), and
the copy would be [bucket, max_model_len] per layer (3.9 GiB at 512 Qwen3-0.6B sequences of
4096 tokens in bf16). So decode runs in groups of sequences whose copy stays under
DECODE_GATHER_BYTES, a static split that graphs capture like any other: memory is bounded for
any bucket and width, and the model runner measures this peak at its largest bucket when it
sizes the KV cache. The graph path still reads max_model_len per sequence (static shapes), so on
CUDA attention=triton or flash_attn, which read only each sequence's context, are the fast
choices; sdpa is the portable reference."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nvllm.attention.base import AttentionBackend, AttentionMetadata, store_kvcache
from nvllm.hookspecs import hookimpl

DECODE_GATHER_BYTES = 256 * 2**20  # most bytes of gathered K and V per decode group, per layer


def decode_groups(batch: int, width_tokens: int, kv_heads: int, head_dim: int, itemsize: int) -> int:
    """Sequences per decode group: as many as keep the K and V copies within DECODE_GATHER_BYTES
    (at least one)."""
    per_seq = 2 * width_tokens * kv_heads * head_dim * itemsize
    return max(1, min(batch, DECODE_GATHER_BYTES // max(per_seq, 1)))


class SDPABackend(AttentionBackend):
    name = "sdpa"
    auto_rank = {"cpu": 1, "cuda": 2}  # runs everywhere; the others are faster where they run

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
            return self._decode(q, k_cache, v_cache, blocks, meta.extra["mask"], scale)
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
                kb = k_cache[used].reshape(-1, num_kv_heads, head_dim)[:ctx_len].transpose(0, 1)[None]
                vb = v_cache[used].reshape(-1, num_kv_heads, head_dim)[:ctx_len].transpose(0, 1)[None]
            out.append(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, is_causal=mask is None,
                                                      scale=scale, enable_gqa=True)[0].transpose(0, 1))
            start += q_len
        return torch.cat(out)

    def _decode(self, q, k_cache, v_cache, blocks, mask, scale):
        batch, num_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[2]
        width = blocks.shape[1] * k_cache.shape[1]
        # the query heads sharing a KV head become that head's query rows: no K/V repeat
        grouped = q.reshape(batch, num_kv_heads, -1, head_dim)
        out = torch.empty(batch, num_kv_heads, num_heads // num_kv_heads, head_dim, dtype=q.dtype, device=q.device)
        step = decode_groups(batch, width, num_kv_heads, head_dim, k_cache.element_size())
        for i in range(0, batch, step):
            keys = k_cache[blocks[i:i + step]].reshape(-1, width, num_kv_heads, head_dim).transpose(1, 2)
            values = v_cache[blocks[i:i + step]].reshape(-1, width, num_kv_heads, head_dim).transpose(1, 2)
            # SDPA's output may have any strides (CUDA's kernels return a transposed layout): copy, never view
            out[i:i + step] = F.scaled_dot_product_attention(grouped[i:i + step], keys, values,
                                                             attn_mask=mask[i:i + step], scale=scale)
        return out.reshape(q.shape)


@hookimpl
def register_attention_backends(register):
    register(SDPABackend)
