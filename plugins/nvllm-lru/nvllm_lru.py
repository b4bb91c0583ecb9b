"""The paged block manager with a better choice of which free block to overwrite: first one that
holds nothing a prefix hit could use, then the least recently used cached block, and last a block
whose prefix kept getting hit (`protect_after_hits`), so one-off prompts cannot flush a shared
system prompt. Hashing, hits and sharing are the built-in `paged` allocator's."""
from collections import OrderedDict
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.sequence import Sequence
from nvllm.kv_cache.paged import PagedBlockManager


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
        self.empty = self.free_block_ids  # nothing a hit could reuse
        del self.free_block_ids
        self.cold: OrderedDict[int, None] = OrderedDict()  # cached
        self.hot: OrderedDict[int, None] = OrderedDict()  # cached and hit protect_after_hits times
        self.hits = [0] * num_blocks  # prefix hits since the block's contents were written

    @property
    def num_free_blocks(self) -> int:
        return len(self.empty) + len(self.cold) + len(self.hot)

    def _take_free_block(self) -> int:
        if self.empty:
            block_id = self.empty.popleft()
        else:
            block_id = (self.cold or self.hot).popitem(last=False)[0]
        block = self.blocks[block_id]
        assert block.ref_count == 0
        if block.hash != -1 and self.hash_to_block_id.get(block.hash) == block_id:
            del self.hash_to_block_id[block.hash]  # its old contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count = -1, [], 1
        self.hits[block_id] = 0
        self.used_block_ids.add(block_id)
        return block_id

    def allocate(self, seq: Sequence):
        assert not seq.block_table
        hits = self._cached_prefix(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block_id in self.used_block_ids:
                block.ref_count += 1
            else:
                (self.hot if block_id in self.hot else self.cold).pop(block_id)
                block.ref_count = 1
                self.used_block_ids.add(block_id)
            self.hits[block_id] += 1
            seq.block_table.append(block_id)
        for _ in range(seq.num_blocks - len(hits)):
            seq.block_table.append(self._take_free_block())
        seq.num_computed_tokens = seq.num_hashed_blocks = len(hits)
        seq.num_computed_tokens *= self.block_size
        self.num_lookup_tokens += len(seq)
        self.num_hit_tokens += seq.num_computed_tokens

    def deallocate(self, seq: Sequence):
        protect = self.config.protect_after_hits
        # the tail first: it becomes older than the prefix it extends, and a tail without its prefix is useless
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count:
                continue
            self.used_block_ids.remove(block_id)
            if block.hash == -1 or self.hash_to_block_id.get(block.hash) != block_id:
                self.empty.append(block_id)
            elif protect and self.hits[block_id] >= protect:
                self.hot[block_id] = None
            else:
                self.cold[block_id] = None
        seq.block_table.clear()
        seq.num_computed_tokens = seq.num_hashed_blocks = 0


@hookimpl
def register_kv_caches(register):
    register(LRUBlockManager)
