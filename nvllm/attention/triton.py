"""Attention with our own Triton kernels: one writes K/V into the paged cache, one attends over
it for decode and varlen prefill alike (cached prefix, then this step's tokens, causal).

Triton is imported when the backend is built, never at registration. On a CPU the kernels run
in Triton's interpreter (slow; for tests and learning). Triton picks interpreter or compiler
once per process, at import: nvllm sets TRITON_INTERPRET=1 itself where it can (no GPU, or a CPU
backend built before triton is imported) and refuses a device the process's mode cannot serve."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from nvllm.attention.base import AttentionBackend, AttentionMetadata
from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl

tl = None  # triton.language, bound by kernels_for()

# Triton picks interpreter or compiler when it is first imported, and torch._dynamo imports it
# (transformers reaches dynamo when saving or loading models). Where no GPU can run compiled
# kernels the interpreter is the only mode that works: pick it at registration, importing nothing.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _store_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                  k_stride_t, k_stride_h, v_stride_t, v_stride_h, c_stride_b, c_stride_s, c_stride_h,
                  block_size, num_kv_heads,
                  HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t)
    if slot < 0:  # CUDA-graph padding: this row has no slot
        return
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < num_kv_heads) & (d[None, :] < HEAD_DIM)
    cache = (slot // block_size) * c_stride_b + (slot % block_size) * c_stride_s + h[:, None] * c_stride_h + d[None, :]
    k = tl.load(k_ptr + t * k_stride_t + h[:, None] * k_stride_h + d[None, :], mask=mask)
    v = tl.load(v_ptr + t * v_stride_t + h[:, None] * v_stride_h + d[None, :], mask=mask)
    tl.store(k_cache_ptr + cache, k, mask=mask)
    tl.store(v_cache_ptr + cache, v, mask=mask)


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


@functools.cache
def kernels_for(device: torch.device) -> SimpleNamespace:
    """Import triton and return the kernels for tensors on `device`, or say why they cannot run."""
    global tl
    if device.type == "cpu" and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton
        import triton.language
    except ImportError as e:
        raise ImportError("attention=triton needs the `triton` package, which is not installed: "
                          "pip install triton (or nvllm[triton]), or use attention=sdpa") from e
    tl = triton.language
    # triton.language's own helpers were jitted at import: they tell which mode this process has
    interpreted = type(triton.language.standard.zeros).__name__ == "InterpretedFunction"
    if device.type == "cpu" and not interpreted:
        raise ConfigError("attention=triton on the CPU runs in Triton's interpreter, which must be chosen before "
                          "triton is imported, and triton was already imported without it in this process: set "
                          "TRITON_INTERPRET=1 in the environment (or load nvllm's plugins before anything imports "
                          "triton), or use attention=sdpa")
    if device.type != "cpu" and interpreted:
        raise ConfigError(f"attention=triton on {device}: TRITON_INTERPRET=1 was set when triton was imported, so "
                          "the kernels would run in the (CPU) interpreter; unset it to compile them for the GPU")
    return _kernels(interpreted)


@functools.cache
def _kernels(interpret: bool) -> SimpleNamespace:
    import triton

    # jit reads the variable now: match triton.language's helpers, whatever the env says today
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return SimpleNamespace(store=triton.jit(_store_kernel), attention=triton.jit(_attention_kernel),
                               next_power_of_2=triton.next_power_of_2)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


def store_kvcache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """Write each token's K/V to its cache slot; slot -1 (padding) is skipped."""
    if k_cache.numel() == 0:
        return
    assert k.stride(-1) == v.stride(-1) == k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    kernels = kernels_for(k.device)
    num_tokens, num_kv_heads, head_dim = k.shape
    kernels.store[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *k_cache.stride()[:3], k_cache.shape[1], num_kv_heads,
        HEAD_DIM=head_dim, BLOCK_H=kernels.next_power_of_2(num_kv_heads),
        BLOCK_D=kernels.next_power_of_2(head_dim))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float, max_query_len: int) -> torch.Tensor:
    """Attention of the packed queries over each sequence's cached prefix and its own new K/V."""
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    kernels = kernels_for(q.device)
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
    kernels.attention[grid](
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
        self.check(device, dtype)  # fail at build time, not mid-run

    def prepare(self, meta: AttentionMetadata, block_size: int):
        meta.extra["max_query_len"] = max(meta.query_lens)

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        return paged_attention(q, k, v, k_cache, v_cache, meta, scale, meta.extra["max_query_len"])


@hookimpl
def register_attention_backends(register):
    register(TritonBackend)
