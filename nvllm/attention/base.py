"""The attention backend family: kernels that write K/V into the paged cache and attend over it.

The model runner builds one `AttentionMetadata` per step and sets it as the forward context;
every attention layer reads it. Query tokens of all sequences are packed: sequence b owns
rows cu_seqlens_q[b]:cu_seqlens_q[b+1] and attends to the first context_lens[b] cached tokens."""
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch


@dataclass
class AttentionMetadata:
    # [batch + 1] int32 prefix sums of query lengths
    cu_seqlens_q: torch.Tensor
    # [batch] int32 tokens in the cache per sequence after this step's writes
    context_lens: torch.Tensor
    # [num_tokens] int64 flat cache slot (block * block_size + offset) of each query token's K/V;
    # -1 marks a padding token (CUDA-graph buckets) whose K/V is thrown away
    slot_mapping: torch.Tensor
    # [batch, max_blocks] int32 block ids, padded with -1
    block_tables: torch.Tensor
    # host copies, so backends can loop without device syncs
    query_lens: list[int]
    context_lens_host: list[int]
    # every sequence has exactly one query token
    is_decode: bool
    # per sequence, how many of its last query rows the step returns logits for (speculative
    # verification: the last token and each drafted one); None: one each (see forward.base.logits_rows)
    num_logits: list[int] | None = None
    # run only the model's first `num_layers` decoder layers, then its final norm and LM head (a
    # self-speculative draft step); None: every layer
    num_layers: int | None = None
    # whatever the backend's `prepare` wants to compute once per step instead of once per layer
    extra: dict = field(default_factory=dict)


class AttentionBackend(ABC):
    name: str
    # attention=auto's order of preference per device type ("cuda", "cpu"), lowest first; a
    # backend that does not rank a device type is never auto's choice there (but may be asked for)
    auto_rank: ClassVar[dict[str, int]] = {}

    @classmethod
    def check(cls, device: torch.device, dtype: torch.dtype, block_size: int | None = None) -> None:
        """Raise (ConfigError, or ImportError for a missing package) with a message naming the
        fix when this backend cannot run on `device` in `dtype` with KV blocks of `block_size`
        tokens (None: not known yet). attention=auto chooses with it; building calls it."""

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        type(self).check(device, dtype)  # refuse at build time, not mid-run
        self.config = config
        self.device = device
        self.dtype = dtype
        self.cache_dtype = dtype  # the KV cache's (the model runner allocates it)

    def prepare(self, meta: AttentionMetadata, block_size: int) -> None:
        """Once per step, before the forward pass."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """q [tokens, heads, head_dim], k/v [tokens, kv_heads, head_dim], caches
        [num_blocks, block_size, kv_heads, head_dim]; writes k/v to the cache, returns
        [tokens, heads, head_dim]."""


@dataclass
class _Context:
    backend: AttentionBackend | None = None
    meta: AttentionMetadata | None = None


_context = _Context()


def get_context() -> _Context:
    return _context


@contextmanager
def forward_context(backend: AttentionBackend, meta: AttentionMetadata):
    _context.backend, _context.meta = backend, meta
    try:
        yield
    finally:
        _context.backend = _context.meta = None


def store_kvcache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor):
    """Write each token's K/V to its slot. A padding slot (-1) indexes the last slot of the
    spare block the model runner allocates past the allocator's blocks; nothing reads it."""
    if k_cache.numel() == 0:  # the warm-up pass runs before the cache exists
        return
    k_cache.view(-1, *k.shape[1:])[slot_mapping] = k
    v_cache.view(-1, *v.shape[1:])[slot_mapping] = v
