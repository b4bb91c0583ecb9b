"""Attention with our own Triton kernels: one writes K/V into the paged cache (shared with
flash_attn, in triton_common.py), one attends over it for decode and varlen prefill alike
(cached prefix, then this step's tokens, causal).

Decode also has a split-K form (flash-decoding): each sequence's context is cut into
`num_splits` chunks, one program per (sequence, KV head, chunk) loads each K/V tile once for the
whole query-head group and writes its partial output with its softmax max and sum; a second
kernel combines the chunks. `decode_splits` picks the count from the batch size, KV heads and the
longest context, so a small batch over long contexts still fills the GPU; a large batch runs the
one-pass kernel. Under CUDA graphs the count depends only on the captured bucket: the graph's
metadata says every context is max_model_len long, and the chunk boundaries are computed in the
kernel from each sequence's real length, so a replay reads no host data.

Triton is imported when the backend is built, never at registration. On a CPU the kernels run
in Triton's interpreter (slow; for tests and learning): see triton_common.py for how the mode
is chosen."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

from nvllm.attention.base import AttentionBackend, AttentionMetadata
from nvllm.attention.triton_common import jit, kernels_for, store_kvcache
from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl

__all__ = ["TritonBackend", "decode_splits", "kernels_for", "paged_attention", "store_kvcache"]

tl = None  # triton.language, bound by _jit()
cached_tile = None  # _cached_tile jitted, bound by _jit(): both attention kernels call it


def _cached_tile(q, m_i, l_i, acc, pos, end, b, kv_head, d, d_ok, k_cache_ptr, v_cache_ptr, block_tables_ptr,
                 bt_stride, block_size, c_stride_b, c_stride_s, c_stride_h, scale_log2, PRECISION: tl.constexpr):
    """One tile of cached positions `pos` (those below `end`), read through sequence b's block
    table, folded into the query rows' running softmax max m_i, sum l_i and output acc (online
    softmax, base 2); returns the three updated."""
    pos_ok = pos < end
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
    return m_new, l_i, acc


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
        m_i, l_i, acc = cached_tile(q, m_i, l_i, acc, start + n, prefix_len, b, kv_head, d, d_ok, k_cache_ptr,
                                    v_cache_ptr, block_tables_ptr, bt_stride, block_size, c_stride_b, c_stride_s,
                                    c_stride_h, scale_log2, PRECISION)

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


def _decode_split_kernel(q_ptr, k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, part_o_ptr, part_m_ptr, part_l_ptr,
                         context_lens_ptr, block_tables_ptr, scale_log2, num_splits, num_heads,
                         q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h,
                         c_stride_b, c_stride_s, c_stride_h, bt_stride, block_size,
                         GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """One program: one chunk of one sequence's context, for the GROUP query heads of one KV head.
    The chunk's bounds come from the sequence's length (read here, on the device); the last
    position is this step's own token, read from k/v. Writes the chunk's normalised output and its
    softmax max and sum (an empty chunk: max -inf, sum 0)."""
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(context_lens_ptr + b)
    prefix_len = ctx_len - 1
    chunk = tl.cdiv(tl.cdiv(ctx_len, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, ctx_len)

    r = tl.arange(0, BLOCK_M)
    head = kv_head * GROUP + r
    row_ok = r < GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(q_ptr + b.to(tl.int64) * q_stride_t + head[:, None] * q_stride_h + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n = tl.arange(0, BLOCK_N)

    cached_end = tl.minimum(hi, prefix_len)
    for start in range(lo, cached_end, BLOCK_N):
        m_i, l_i, acc = cached_tile(q, m_i, l_i, acc, start + n, cached_end, b, kv_head, d, d_ok, k_cache_ptr,
                                    v_cache_ptr, block_tables_ptr, bt_stride, block_size, c_stride_b, c_stride_s,
                                    c_stride_h, scale_log2, PRECISION)

    if (lo <= prefix_len) & (prefix_len < hi):  # this step's own token, straight from k/v
        k_own = tl.load(k_ptr + b.to(tl.int64) * k_stride_t + kv_head * k_stride_h + d, mask=d_ok, other=0.0)
        s_own = tl.sum(q.to(tl.float32) * k_own.to(tl.float32)[None, :], 1) * scale_log2
        m_new = tl.maximum(m_i, s_own)
        p_own = tl.math.exp2(s_own - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + p_own
        v_own = tl.load(v_ptr + b.to(tl.int64) * v_stride_t + kv_head * v_stride_h + d, mask=d_ok, other=0.0)
        acc = acc * alpha[:, None] + p_own[:, None] * v_own.to(tl.float32)[None, :]
        m_i = m_new

    part = (b * num_heads + head).to(tl.int64) * num_splits + split
    tl.store(part_o_ptr + part[:, None] * HEAD_DIM + d[None, :], acc / tl.where(l_i > 0, l_i, 1.0)[:, None],
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(part_m_ptr + part, m_i, mask=row_ok)
    tl.store(part_l_ptr + part, l_i, mask=row_ok)


def _decode_reduce_kernel(part_o_ptr, part_m_ptr, part_l_ptr, o_ptr, num_splits, num_heads, o_stride_t, o_stride_h,
                          HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (sequence, query head): the chunks' outputs weighted by their share of the
    softmax sum, exp2(max - overall max) * sum."""
    b = tl.program_id(0)
    head = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    sp_ok = sp < num_splits
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    part = (b * num_heads + head).to(tl.int64) * num_splits + sp
    m = tl.load(part_m_ptr + part, mask=sp_ok, other=float("-inf"))
    l = tl.load(part_l_ptr + part, mask=sp_ok, other=0.0)
    weight = tl.where(l > 0, tl.math.exp2(m - tl.max(m, 0)) * l, 0.0)
    o = tl.load(part_o_ptr + part[:, None] * HEAD_DIM + d[None, :], mask=sp_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(weight[:, None] * o, 0) / tl.sum(weight, 0)
    tl.store(o_ptr + b.to(tl.int64) * o_stride_t + head * o_stride_h + d, out.to(o_ptr.dtype.element_ty), mask=d_ok)


def _jit(fn, kernels):
    global tl, cached_tile
    tl = kernels.language
    cached_tile = jit(_cached_tile, kernels.interpreted)
    return jit(fn, kernels.interpreted)


MIN_SPLIT = 256  # fewest context positions worth a chunk of their own (its partial write and the combine cost)
MAX_SPLITS = 32


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 on a CPU (the interpreter has no parallelism to fill)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_splits(batch: int, num_kv_heads: int, max_context: int, sms: int) -> int:
    """How many chunks a decode step cuts each context into: enough programs for about two waves
    over the GPU's `sms`, none shorter than MIN_SPLIT positions, at most MAX_SPLITS; 1 (the one-pass
    kernel) once the batch fills the GPU. Host values only, so a CUDA-graph bucket has one count."""
    wanted = -(-2 * sms // max(1, batch * num_kv_heads))
    return max(1, min(wanted, -(-max_context // MIN_SPLIT), MAX_SPLITS))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float, max_query_len: int, num_splits: int = 1) -> torch.Tensor:
    """Attention of the packed queries over each sequence's cached prefix and its own new K/V;
    `num_splits` > 1 (decode only) runs the split-K kernels."""
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    kernels = kernels_for(q.device)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    group = num_heads // num_kv_heads
    group_p = kernels.next_power_of_2(group)
    block_d = max(16, kernels.next_power_of_2(head_dim))
    # float32 means float32: no silent TF32 on the GPU (16-bit inputs take the default)
    precision = "ieee" if q.dtype == torch.float32 else None
    if k_cache.dim() == 4:
        cache_strides, block_size = k_cache.stride()[:3], k_cache.shape[1]
    else:  # the warm-up pass, before the cache exists: nothing is cached, so point at k/v, read none
        k_cache, v_cache, cache_strides, block_size = k, v, (0, 0, 0), 1
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    batch = meta.context_lens.shape[0]
    if meta.is_decode and num_splits > 1:
        part_o = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_m = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
        _jit(_decode_split_kernel, kernels)[(batch, num_kv_heads, num_splits)](
            q, k, v, k_cache, v_cache, part_o, part_m, part_l, meta.context_lens, meta.block_tables,
            scale * math.log2(math.e), num_splits, num_heads,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            *cache_strides, meta.block_tables.stride(0), block_size,
            GROUP=group, BLOCK_M=max(16, group_p), BLOCK_N=64, HEAD_DIM=head_dim, BLOCK_D=block_d,
            PRECISION=precision)
        _jit(_decode_reduce_kernel, kernels)[(batch, num_heads)](
            part_o, part_m, part_l, out, num_splits, num_heads, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_S=kernels.next_power_of_2(num_splits), BLOCK_D=block_d)
        return out
    # tl.dot wants every dimension >= 16; padding rows cost little next to loading K/V
    block_m = max(16 if meta.is_decode else 64, group_p)
    block_q = block_m // group_p
    grid = (batch, num_kv_heads, 1 if meta.is_decode else -(-max_query_len // block_q))
    _jit(_attention_kernel, kernels)[grid](
        q, k, v, k_cache, v_cache, out, meta.cu_seqlens_q, meta.context_lens, meta.block_tables,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        *cache_strides, meta.block_tables.stride(0), block_size,
        GROUP=group, GROUP_P=group_p, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=64, HEAD_DIM=head_dim,
        BLOCK_D=block_d, IS_DECODE=meta.is_decode, PRECISION=precision)
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

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        super().__init__(config, device, dtype)
        if kernels_for(device).interpreted:  # a choice someone made on purpose, but its cost is easy to miss
            logging.getLogger(__name__).warning(
                "nvllm: attention=triton on the CPU runs its kernels in Triton's interpreter, one Python call per "
                "kernel program: it is there to test and read the kernels, and every step is many times slower "
                "than with attention=cpu or attention=sdpa (do not time it)")

    def prepare(self, meta: AttentionMetadata, block_size: int):
        meta.extra["max_query_len"] = max(meta.query_lens)
        # under CUDA-graph capture: the bucket's batch at max_model_len (see the module docstring)
        meta.extra["max_context"] = max(meta.context_lens_host)

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        splits = 1
        if meta.is_decode:
            splits = decode_splits(len(meta.query_lens), k.shape[1], meta.extra["max_context"], num_sms(q.device))
        return paged_attention(q, k, v, k_cache, v_cache, meta, scale, meta.extra["max_query_len"], splits)


@hookimpl
def register_attention_backends(register):
    register(TritonBackend)
