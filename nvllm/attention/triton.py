"""Attention with our own Triton kernels: one writes K/V into the paged cache (shared with
flash_attn, in triton_common.py), one attends over it for decode and varlen prefill alike
(cached prefix, then this step's tokens, causal).

Triton is imported when the backend is built, never at registration. On a CPU the kernels run
in Triton's interpreter (slow; for tests and learning): see triton_common.py for how the mode
is chosen."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nvllm.attention.base import AttentionBackend, AttentionMetadata
from nvllm.attention.triton_common import jit, kernels_for, store_kvcache
from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl

__all__ = ["TritonBackend", "kernels_for", "paged_attention", "store_kvcache"]

tl = None  # triton.language, bound by _attention_jit()


def _attention_kernel(q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, o_ptr,
                      cu_seqlens_q_ptr, context_lens_ptr, block_tables_ptr, scale_log2,
                      q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h, o_stride_t, o_stride_h,
                      c_stride_b, c_stride_s, c_stride_h, bt_stride, block_size,
                      GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                      IS_DECODE: tl.constexpr, PRECISION: tl.constexpr):
    """One program: BLOCK_Q query tokens of one sequence times the GROUP query heads that share
    one KV head, so each K/V tile is loaded once for the whole group (GQA)."""
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    tile = tl.program_id(2)
    if IS_DECODE:  # needs neither cu_seqlens_q nor host lengths: what a captured graph wants
        q_start = b
        q_len = 1
    else:
        q_start = tl.load(cu_seqlens_q_ptr + b)
        q_len = tl.load(cu_seqlens_q_ptr + b + 1) - q_start
    if tile * BLOCK_Q >= q_len:
        return
    ctx_len = tl.load(context_lens_ptr + b)
    prefix_len = ctx_len - q_len

    r = tl.arange(0, BLOCK_M)
    qi = tile * BLOCK_Q + r // GROUP_P  # query index within the sequence
    head = kv_head * GROUP + r % GROUP_P
    row_ok = (qi < q_len) & (r % GROUP_P < GROUP)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_rows = (q_start + qi).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * q_stride_t + head[:, None] * q_stride_h + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n = tl.arange(0, BLOCK_N)

    # the cached prefix, read through the block table: every query here sees all of it
    for start in range(0, prefix_len, BLOCK_N):
        pos = start + n
        pos_ok = pos < prefix_len
        block = tl.load(block_tables_ptr + b * bt_stride + pos // block_size, mask=pos_ok, other=0).to(tl.int64)
        off = block * c_stride_b + (pos % block_size) * c_stride_s + kv_head * c_stride_h
        kt = tl.load(k_cache_ptr + off[None, :] + d[:, None], mask=pos_ok[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
        s = tl.where(pos_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + off[:, None] + d[None, :], mask=pos_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    # this step's own tokens, straight from k/v (so a pass without a cache works too), causal;
    # the first tile always holds token 0, so no row is all -inf
    end = tl.minimum(q_len, (tile + 1) * BLOCK_Q)
    for start in range(0, end, BLOCK_N):
        j = start + n
        j_ok = j < q_len
        rows = (q_start + j).to(tl.int64)
        kt = tl.load(k_ptr + rows[None, :] * k_stride_t + kv_head * k_stride_h + d[:, None],
                     mask=j_ok[None, :] & d_ok[:, None], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale_log2
        s = tl.where(j_ok[None, :] & (j[None, :] <= qi[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + rows[:, None] * v_stride_t + kv_head * v_stride_h + d[None, :],
                    mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(o_ptr + q_rows[:, None] * o_stride_t + head[:, None] * o_stride_h + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _attention_jit(kernels):
    global tl
    tl = kernels.language
    return jit(_attention_kernel, kernels.interpreted)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float, max_query_len: int) -> torch.Tensor:
    """Attention of the packed queries over each sequence's cached prefix and its own new K/V."""
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    kernels = kernels_for(q.device)
    attention = _attention_jit(kernels)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    group = num_heads // num_kv_heads
    group_p = kernels.next_power_of_2(group)
    # tl.dot wants every dimension >= 16; padding rows cost little next to loading K/V
    block_m = max(16 if meta.is_decode else 64, group_p)
    block_q = block_m // group_p
    if k_cache.dim() == 4:
        cache_strides, block_size = k_cache.stride()[:3], k_cache.shape[1]
    else:  # the warm-up pass, before the cache exists: nothing is cached, so point at k/v, read none
        k_cache, v_cache, cache_strides, block_size = k, v, (0, 0, 0), 1
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    batch = meta.context_lens.shape[0]
    grid = (batch, num_kv_heads, 1 if meta.is_decode else -(-max_query_len // block_q))
    attention[grid](
        q, k, v, k_cache, v_cache, out, meta.cu_seqlens_q, meta.context_lens, meta.block_tables,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        *cache_strides, meta.block_tables.stride(0), block_size,
        GROUP=group, GROUP_P=group_p, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=64, HEAD_DIM=head_dim,
        BLOCK_D=max(16, kernels.next_power_of_2(head_dim)), IS_DECODE=meta.is_decode,
        # float32 means float32: no silent TF32 on the GPU (16-bit inputs take the default)
        PRECISION="ieee" if q.dtype == torch.float32 else None)
    return out


class TritonBackend(AttentionBackend):
    name = "triton"
    auto_rank = {"cuda": 1}  # on a CPU it runs interpreted: never auto's choice there

    @dataclass
    class Config:
        name: str = "triton"

    @classmethod
    def check(cls, device: torch.device, dtype: torch.dtype, block_size: int | None = None) -> None:
        """Raise naming the fix when the kernels cannot run here (any block size works)."""
        kernels_for(device)
        if device.type == "cpu" and dtype == torch.bfloat16:
            raise ConfigError("attention=triton on the CPU runs in Triton's interpreter, whose bfloat16 dot products "
                              "are wrong; use dtype=float32 (or float16) on the CPU, or attention=sdpa")

    def prepare(self, meta: AttentionMetadata, block_size: int):
        meta.extra["max_query_len"] = max(meta.query_lens)

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        return paged_attention(q, k, v, k_cache, v_cache, meta, scale, meta.extra["max_query_len"])


@hookimpl
def register_attention_backends(register):
    register(TritonBackend)
