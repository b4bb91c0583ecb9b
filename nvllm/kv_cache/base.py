"""The KV cache allocator family: which cache blocks hold each sequence's keys and values."""
from abc import ABC, abstractmethod
from dataclasses import dataclass

from nvllm.sequence import Sequence

CPU_DEFAULT_BUDGET_GB = 2.0  # the KV cache on a CPU when kv_cache sets no budget: a benchmark-sized batch of a small model


@dataclass
class KVCacheConfig:
    """Sizing fields every allocator shares; the model runner reads them."""

    name: str = ""
    # tokens per cache block
    block_size: int = 256
    # blocks in the cache; null sizes the cache from the memory budget
    num_blocks: int | None = None
    # GiB for the cache; null: gpu_memory_utilization on CUDA, 2 GiB on CPU
    memory_budget_gb: float | None = None
    # fraction of GPU memory the whole engine may use (CUDA, when no budget is given)
    gpu_memory_utilization: float = 0.9

    def __post_init__(self):
        assert self.block_size > 0, "kv_cache.block_size must be positive"
        assert self.num_blocks is None or self.num_blocks > 0, "kv_cache.num_blocks must be positive"
        assert 0 < self.gpu_memory_utilization <= 1, "kv_cache.gpu_memory_utilization must be in (0, 1]"


class KVCacheAllocator(ABC):
    name: str
    Config = KVCacheConfig

    def __init__(self, config, num_blocks: int, block_size: int):
        self.config = config
        self.num_blocks = num_blocks
        self.block_size = block_size
        # prompt tokens looked up / found in the prefix cache (for the hit rate)
        self.num_lookup_tokens = 0
        self.num_hit_tokens = 0

    @abstractmethod
    def can_allocate(self, seq: Sequence) -> bool:
        """Whether blocks for all of `seq`'s tokens are free (prefix hits counted)."""

    @abstractmethod
    def allocate(self, seq: Sequence) -> None:
        """Fill `seq.block_table` and set `seq.num_computed_tokens` to its prefix hits."""

    @abstractmethod
    def deallocate(self, seq: Sequence) -> None:
        """Release `seq`'s blocks and reset its cache state (finish or preemption)."""

    @abstractmethod
    def can_append(self, seq: Sequence, num_lookahead: int = 0) -> bool:
        """Whether `may_append` can cover `seq`'s current length plus `num_lookahead` slots."""

    @abstractmethod
    def may_append(self, seq: Sequence, num_lookahead: int = 0) -> None:
        """Grow `seq.block_table` to cover `len(seq) + num_lookahead` tokens (the lookahead slots
        hold drafted tokens that speculative decoding verifies in the same step)."""

    @abstractmethod
    def rollback(self, seq: Sequence) -> None:
        """A step wrote K/V past `len(seq)` tokens (drafted tokens that were rejected): release the
        blocks past those `len(seq)` tokens need. Nothing past `seq.num_computed_tokens` was ever
        entered in the prefix cache (`on_computed` only sees accepted tokens)."""

    def on_computed(self, seq: Sequence) -> None:
        """Called after a step wrote K/V for `seq.num_computed_tokens` tokens."""

    @property
    @abstractmethod
    def num_free_blocks(self) -> int: ...

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_lookup_tokens if self.num_lookup_tokens else 0.0
