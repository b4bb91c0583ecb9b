"""The paged block manager with a better choice of which free block to overwrite: first one that
holds nothing a prefix hit could use, then the least recently used cached block, and last a block
whose prefix kept getting hit (`protect_after_hits`), so one-off prompts cannot flush a shared
system prompt. Hashing, hits and sharing are the built-in `paged` allocator's: this class only
replaces its free list (the four methods the paged allocator marks for that)."""
from collections import OrderedDict, deque
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.kv_cache.paged import PagedBlockManager
from nvllm.sequence import Sequence


class LRUBlockManager(PagedBlockManager):
    name = "lru"

    @dataclass
    class Config(PagedBlockManager.Config):
        name: str = "lru"
        # prefix hits after which a cached block is overwritten only when no colder one is left; 0: plain LRU
        protect_after_hits: int = 2

        def __post_init__(self):
            super().__post_init__()
            assert self.protect_after_hits >= 0, "kv_cache.protect_after_hits must be >= 0"

    def __init__(self, config, num_blocks: int, block_size: int):
        super().__init__(config, num_blocks, block_size)
        # free blocks in three queues instead of paged's one, each oldest first
        self.empty: deque[int] = deque(range(num_blocks))  # nothing a hit could reuse
        self.cold: OrderedDict[int, None] = OrderedDict()  # cached
        self.hot: OrderedDict[int, None] = OrderedDict()  # cached and hit protect_after_hits times
        self.hits = [0] * num_blocks  # prefix hits since the block's contents were written

    @property
    def num_free_blocks(self) -> int:
        return len(self.empty) + len(self.cold) + len(self.hot)

    def push_free(self, block_id: int):
        block = self.blocks[block_id]
        if block.hash == -1 or self.hash_to_block_id.get(block.hash) != block_id:
            self.empty.append(block_id)
        elif self.config.protect_after_hits and self.hits[block_id] >= self.config.protect_after_hits:
            self.hot[block_id] = None
        else:
            self.cold[block_id] = None

    def pop_free(self) -> int:
        block_id = self.empty.popleft() if self.empty else (self.cold or self.hot).popitem(last=False)[0]
        self.hits[block_id] = 0
        return block_id

    def remove_free(self, block_id: int):
        (self.hot if block_id in self.hot else self.cold).pop(block_id)

    def allocate(self, seq: Sequence):
        super().allocate(seq)
        for block_id in seq.block_table[:seq.num_computed_tokens // self.block_size]:  # the prefix hits
            self.hits[block_id] += 1


@hookimpl
def register_kv_caches(register):
    register(LRUBlockManager)
