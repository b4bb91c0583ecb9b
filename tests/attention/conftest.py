"""Random paged-attention batches laid out the way the model runner lays them out, and the
`sdpa` backend's answer for them (the reference every other backend must match)."""
import dataclasses
import os

import pytest
import torch

from nvllm.attention.base import AttentionMetadata
from nvllm.config import ConfigError

# Triton serves CPU tensors only in its interpreter, chosen once per process when triton is
# imported; set it before any test module can import triton, unless a GPU wants compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE_DTYPES = [
    pytest.param(("cpu", torch.float32), id="cpu-float32"),
    *(pytest.param(("cuda", dtype), id=f"cuda-{str(dtype).removeprefix('torch.')}", marks=pytest.mark.gpu)
      for dtype in (torch.float32, torch.bfloat16, torch.float16)),
]
# bf16/fp16 outputs against a float32 reference computed from the same (rounded) inputs
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
             torch.float16: dict(atol=5e-3, rtol=5e-3)}


def triton_kernels(device: str):
    """The Triton kernels for `device`, or skip saying why they cannot run in this process."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton")
    from nvllm.attention.triton import kernels_for

    try:
        return kernels_for(torch.device(device))
    except ConfigError as e:  # the process is in the other Triton mode (see TRITON_INTERPRET above)
        pytest.skip(str(e))


@dataclasses.dataclass
class Batch:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    block_size: int
    scale: float


def make_batch(q_lens, ctx_lens, block_size, heads, kv_heads, head_dim, device="cpu", dtype=torch.float32,
               spare_blocks=3) -> Batch:
    """Fresh random q/k/v (views into one packed projection, as the models make them), caches full
    of random values, and shuffled block tables padded with -1 to the longest sequence."""
    needed = [-(-c // block_size) for c in ctx_lens]
    num_blocks = sum(needed) + spare_blocks
    free = torch.randperm(num_blocks).tolist()
    tables = [[free.pop() for _ in range(n)] for n in needed]
    slots = [t[p // block_size] * block_size + p % block_size
             for t, q_len, ctx_len in zip(tables, q_lens, ctx_lens) for p in range(ctx_len - q_len, ctx_len)]
    cu = [0]
    for n in q_lens:
        cu.append(cu[-1] + n)
    qkv = torch.randn(cu[-1], (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    cache_shape = (num_blocks, block_size, kv_heads, head_dim)

    def tensor(data, dtype):
        return torch.tensor(data, dtype=dtype, device=device)

    meta = AttentionMetadata(
        cu_seqlens_q=tensor(cu, torch.int32), context_lens=tensor(ctx_lens, torch.int32),
        slot_mapping=tensor(slots, torch.int64),
        block_tables=tensor([t + [-1] * (max(needed) - len(t)) for t in tables], torch.int32),
        query_lens=list(q_lens), context_lens_host=list(ctx_lens), is_decode=max(q_lens) == 1)
    k_cache, v_cache = (torch.randn(cache_shape, device=device, dtype=dtype) for _ in range(2))
    return Batch(q.view(-1, heads, head_dim), k.view(-1, kv_heads, head_dim), v.view(-1, kv_heads, head_dim),
                 k_cache, v_cache, meta, block_size, head_dim ** -0.5)


def run(backend_cls, batch: Batch, dtype=None, empty_cache=False):
    """(output, k_cache, v_cache) of one backend on copies of the batch, optionally cast to `dtype`."""
    cast = (lambda t: t.to(dtype)) if dtype else (lambda t: t)
    q, k, v = cast(batch.q), cast(batch.k), cast(batch.v)
    if empty_cache:  # the model runner's warm-up pass, before the cache is allocated
        k_cache = v_cache = torch.tensor([], device=q.device, dtype=q.dtype)
    else:
        k_cache, v_cache = cast(batch.k_cache).clone(), cast(batch.v_cache).clone()
    meta = dataclasses.replace(batch.meta, extra={})
    backend = backend_cls(backend_cls.Config(), device=q.device, dtype=q.dtype)
    backend.prepare(meta, batch.block_size)
    return backend.forward(q, k, v, k_cache, v_cache, meta, batch.scale), k_cache, v_cache


def sdpa_reference(batch: Batch, empty_cache=False):
    """The sdpa backend's answer in float32."""
    from nvllm.attention.sdpa import SDPABackend

    return run(SDPABackend, batch, dtype=torch.float32, empty_cache=empty_cache)
