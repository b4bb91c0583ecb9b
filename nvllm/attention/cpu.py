"""Attention for CPU runs: decode reads the paged cache in place with a small C kernel
(nvllm/kernels/cpu_decode.c, compiled on first use with the system's C compiler and OpenMP);
prefill is the sdpa backend's. sdpa's decode first copies every sequence's blocks into one padded
tensor and then reads the copy; this kernel reads each cached row once, where it lies.

It computes in float32 and keeps a float32 KV cache whatever the weights' dtype: with 16-bit torch
modules (dtype=bfloat16 or float16, forward=eager) their q, k and v are widened on the way in and
the output rounded back; forward=fused_cpu's C step reads the same float32 cache."""
import ctypes
import functools
from dataclasses import dataclass

import torch

from nvllm.attention.base import AttentionMetadata, store_kvcache
from nvllm.attention.sdpa import SDPABackend
from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl
from nvllm.kernels import load_library


@functools.cache
def decode_kernel():
    """The compiled `nvllm_paged_decode_attention`."""
    fn = load_library("cpu_decode.c", "attention=cpu", "attention=sdpa").nvllm_paged_decode_attention
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, i64, i64, i64, i64, i64, ctypes.c_float, ptr, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class CPUBackend(SDPABackend):
    name = "cpu"
    auto_rank = {"cpu": 0}

    @dataclass
    class Config:
        name: str = "cpu"

    @classmethod
    def check(cls, device: torch.device, dtype: torch.dtype, block_size: int | None = None) -> None:
        """Raise naming the fix unless this is a CPU run whose C compiler builds the kernel."""
        if device.type != "cpu":
            raise ConfigError(f"attention=cpu runs on the CPU and this run is on {device.type}; use attention=sdpa, "
                              f"triton or flash_attn there")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"attention=cpu runs float32, bfloat16 or float16 models, not {dtype}; use dtype=float32 "
                              f"(the CPU default) or attention=sdpa")
        decode_kernel()

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        super().__init__(config, device, dtype)
        self.kernel = decode_kernel()
        self.cache_dtype = torch.float32

    def prepare(self, meta: AttentionMetadata, block_size: int):
        if not meta.is_decode:
            super().prepare(meta, block_size)

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        if q.dtype != torch.float32:  # 16-bit torch modules: float32 attention over the float32 cache
            return self.forward(q.float(), k.float(), v.float(), k_cache, v_cache, meta, scale).to(q.dtype)
        if not meta.is_decode:
            return super().forward(q, k, v, k_cache, v_cache, meta, scale)
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        q = q.contiguous()
        out = torch.empty_like(q)
        tables, lens = meta.block_tables, meta.context_lens
        status = self.kernel(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
                             tables.shape[1], lens.data_ptr(), q.shape[0], q.shape[1], k_cache.shape[2],
                             q.shape[2], k_cache.shape[1], scale, out.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise MemoryError("attention=cpu: the decode kernel could not allocate its score rows")
        return out


@hookimpl
def register_attention_backends(register):
    register(CPUBackend)
