"""Attention with the flash-attn package, as nano-vllm does it: `flash_attn_varlen_func` for
prefill (reading a cached prefix through the block table) and `flash_attn_with_kvcache` for
decode. CUDA, float16/bfloat16 and block sizes that are multiples of 256 only; flash-attn is
imported when the backend is built, never at registration."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nvllm.attention.base import AttentionBackend, AttentionMetadata
from nvllm.attention.base import store_kvcache as index_store
from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl

INSTALL_HINT = ("pip install flash-attn (on a CUDA machine; nvllm[cuda]), or use attention=sdpa or "
                "attention=triton")


class FlashAttnBackend(AttentionBackend):
    name = "flash_attn"
    auto_rank = {"cuda": 0}

    @dataclass
    class Config:
        name: str = "flash_attn"

    @classmethod
    def check(cls, device: torch.device, dtype: torch.dtype, block_size: int | None = None) -> None:
        """Raise naming the fix when flash-attn cannot run here (block_size None: not known yet)."""
        if device.type != "cuda":
            # not attention=triton: off CUDA it runs in Triton's interpreter, which is no fix for speed
            fix = "attention=cpu (float32) or attention=sdpa" if device.type == "cpu" else "attention=sdpa"
            raise ConfigError(f"attention=flash_attn needs a CUDA device (flash-attn has no CPU build) and this run "
                              f"is on {device.type}; use {fix}")
        if dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"attention=flash_attn runs float16 and bfloat16 only, not {dtype}; use "
                              f"dtype=bfloat16, or attention=sdpa or attention=triton")
        if block_size is not None and block_size % 256:
            raise ConfigError(f"attention=flash_attn reads a paged KV cache only in blocks of a multiple of 256 "
                              f"tokens, not kv_cache.block_size={block_size}; use kv_cache.block_size=256, or "
                              f"attention=triton for smaller blocks")
        _kernels()

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        super().__init__(config, device, dtype)
        self.varlen, self.with_kvcache = _kernels()
        self.store = _store_for(device)
        self.checked_block_size = None

    def prepare(self, meta: AttentionMetadata, block_size: int):
        if block_size != self.checked_block_size:
            self.check(self.device, self.dtype, block_size)
            self.checked_block_size = block_size
        # padding rows of a CUDA-graph batch have only -1 blocks: point them at a real block, read-only
        meta.extra["block_tables"] = meta.block_tables.clamp(min=0)
        if meta.is_decode:
            return
        meta.extra["max_seqlen_q"] = max(meta.query_lens)
        meta.extra["max_seqlen_k"] = max(meta.context_lens_host)
        meta.extra["prefix"] = any(c > q for q, c in zip(meta.query_lens, meta.context_lens_host))
        meta.extra["cu_seqlens_k"] = F.pad(torch.cumsum(meta.context_lens, 0, dtype=torch.int32), (1, 0))

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        self.store(k, v, k_cache, v_cache, meta.slot_mapping)
        x = meta.extra
        if meta.is_decode:
            o = self.with_kvcache(q.unsqueeze(1), k_cache, v_cache, cache_seqlens=meta.context_lens,
                                  block_table=x["block_tables"], softmax_scale=scale, causal=True)
            return o.squeeze(1)
        if not x["prefix"]:  # nothing cached before this step (also the warm-up pass, which has no cache)
            return self.varlen(q, k, v, cu_seqlens_q=meta.cu_seqlens_q, cu_seqlens_k=meta.cu_seqlens_q,
                               max_seqlen_q=x["max_seqlen_q"], max_seqlen_k=x["max_seqlen_q"],
                               softmax_scale=scale, causal=True)
        # causal is aligned to the end of each sequence: query i sees the prefix and new tokens <= i
        return self.varlen(q, k_cache, v_cache, cu_seqlens_q=meta.cu_seqlens_q, cu_seqlens_k=x["cu_seqlens_k"],
                           max_seqlen_q=x["max_seqlen_q"], max_seqlen_k=x["max_seqlen_k"], softmax_scale=scale,
                           causal=True, block_table=x["block_tables"])


def _kernels():
    try:
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    except ImportError as e:
        raise ImportError(f"attention=flash_attn needs the `flash-attn` package, which is not installed "
                          f"({e}): {INSTALL_HINT}") from e
    return flash_attn_varlen_func, flash_attn_with_kvcache


def _store_for(device: torch.device):
    """The Triton store kernel when triton can compile here (it skips -1 padding slots in-kernel),
    else the index-copy store."""
    try:
        from nvllm.attention.triton_common import kernels_for, store_kvcache

        kernels_for(device)
        return store_kvcache
    except (ImportError, ConfigError):
        return index_store


@hookimpl
def register_attention_backends(register):
    register(FlashAttnBackend)
