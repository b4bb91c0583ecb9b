"""What the Triton-using code (the triton and flash_attn backends, the weight-only matmuls and the
fused MoE in nvllm/kernels/) shares: importing Triton in the mode this process can serve, and the
kernel that writes K/V into the paged cache.

Triton picks interpreter or compiler once per process, at import: nvllm sets TRITON_INTERPRET=1
itself where it can (no GPU, or a CPU backend built before triton is imported) and refuses a
device the process's mode cannot serve."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from types import SimpleNamespace

import torch

from nvllm.errors import ConfigError

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
    return SimpleNamespace(store=jit(_store_kernel, interpreted), interpreted=interpreted,
                           language=triton.language, next_power_of_2=triton.next_power_of_2)


@functools.cache
def compiles_for(device: torch.device) -> bool:
    """Whether Triton kernels can be compiled for CUDA `device` in this process: where not (triton
    missing, or imported in interpreter mode) the layers with Triton kernels run their torch code."""
    try:
        return not kernels_for(device).interpreted
    except (ImportError, ConfigError):
        return False


def why_no_compiled_kernels() -> str | None:
    """Why this process could not compile Triton kernels for CUDA, or None; without importing triton."""
    if importlib.util.find_spec("triton") is None:
        return "the `triton` package is not installed (pip install triton)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set, so Triton would run its kernels in the CPU interpreter (unset it)"
    return None


@functools.cache
def jit(fn, interpreted: bool):
    """`triton.jit(fn)` in the process's mode; `fn`'s module must have bound `tl` first."""
    import triton

    # jit reads the variable now: match triton.language's helpers, whatever the env says today
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpreted else "0"
    try:
        return triton.jit(fn)
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
