"""What both Triton-using backends (triton, flash_attn) share: importing Triton in the mode this
process can serve (nvllm/kernels/triton_mode.py, shared with the kernels there), and the kernel
that writes K/V into the paged cache."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from nvllm.kernels.triton_mode import jit, triton_for

__all__ = ["jit", "kernels_for", "store_kvcache"]

tl = None  # triton.language, bound by kernels_for()


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


@functools.cache
def kernels_for(device: torch.device) -> SimpleNamespace:
    """Import triton and return the kernels for tensors on `device`, or say why they cannot run."""
    global tl
    triton = triton_for(device, "attention=triton", "attention=sdpa")
    tl = triton.language
    return SimpleNamespace(store=jit(_store_kernel, triton.interpreted), **vars(triton))


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
