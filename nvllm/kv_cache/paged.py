"""Paged block manager with hash-chained prefix caching (nano-vllm's scheme).

A full block's hash chains the previous block's hash with its token ids. A block enters the
prefix cache only once its K/V has been computed, so a hit never reads a block still being
filled. Freed blocks keep their hash and are revived by a hit until they are reused."""
from collections import deque
from dataclasses import dataclass

import numpy as np
import xxhash

from nvllm.sequence import Sequence
from nvllm.hookspecs import hookimpl
from nvllm.kv_cache.base import KVCacheAllocator, KVCacheConfig


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash = -1
        self.token_ids: list[int] = []


def compute_hash(token_ids: list[int], prefix: int = -1) -> int:
    h = xxhash.xxh64()
    if prefix != -1:
        h.update(prefix.to_bytes(8, "little"))
    h.update(np.array(token_ids, dtype=np.int64).tobytes())
    return h.intdigest()


class PagedBlockManager(KVCacheAllocator):
    name = "paged"

    @dataclass
    class Config(KVCacheConfig):
        name: str = "paged"
        # reuse the K/V of identical prompt prefixes across requests
        prefix_caching: bool = True

    def __init__(self, config, num_blocks: int, block_size: int):
        super().__init__(config, num_blocks, block_size)
        self.prefix_caching = config.prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block_id: dict[int, int] = {}
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.used_block_ids: set[int] = set()
        # seq id -> its full blocks already entered in the prefix cache
        self.num_hashed_blocks: dict[int, int] = {}

    # -- the free list: which free block is overwritten next. An allocator built on this one
    # (plugins/nvllm-lru) overrides these four: a freed block keeps its hash until it is popped.
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def push_free(self, block_id: int):
        self.free_block_ids.append(block_id)

    def pop_free(self) -> int:
        return self.free_block_ids.popleft()

    def remove_free(self, block_id: int):  # a prefix hit takes a free block back
        self.free_block_ids.remove(block_id)

    def _take_free_block(self) -> int:
        block = self.blocks[self.pop_free()]
        assert block.ref_count == 0
        if block.hash != -1 and self.hash_to_block_id.get(block.hash) == block.block_id:
            del self.hash_to_block_id[block.hash]  # its old contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count = -1, [], 1
        self.used_block_ids.add(block.block_id)
        return block.block_id

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix. The block holding the last prompt token is
        never a hit: the model must run at least one token to produce logits."""
        if not self.prefix_caching:
            return []
        hits, h = [], -1
        for i in range((len(seq) - 1) // self.block_size):
            token_ids = seq.block(i)
            h = compute_hash(token_ids, h)
            block_id = self.hash_to_block_id.get(h)
            if block_id is None or self.blocks[block_id].token_ids != token_ids:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._cached_prefix(seq)
        revived = sum(1 for b in hits if b not in self.used_block_ids)  # free blocks a hit takes back
        return self.num_free_blocks - revived >= seq.num_blocks - len(hits)

    def allocate(self, seq: Sequence):
        assert not seq.block_table
        hits = self._cached_prefix(seq)
        for block_id in hits:
            block = self.blocks[block_id]
            if block_id in self.used_block_ids:
                block.ref_count += 1
            else:
                self.remove_free(block_id)
                block.ref_count = 1
                self.used_block_ids.add(block_id)
            seq.block_table.append(block_id)
        for _ in range(seq.num_blocks - len(hits)):
            seq.block_table.append(self._take_free_block())
        self.num_hashed_blocks[seq.seq_id] = len(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        self.num_lookup_tokens += len(seq)
        self.num_hit_tokens += seq.num_computed_tokens

    def deallocate(self, seq: Sequence):
        for block_id in reversed(seq.block_table):  # the tail first: useless without its prefix
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                self.used_block_ids.remove(block_id)
                self.push_free(block_id)
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        self.num_hashed_blocks.pop(seq.seq_id, None)

    def _blocks_for(self, seq: Sequence, num_lookahead: int) -> int:
        return (seq.num_tokens + num_lookahead + self.block_size - 1) // self.block_size

    def can_append(self, seq: Sequence, num_lookahead: int = 0) -> bool:
        need = self._blocks_for(seq, num_lookahead) - len(seq.block_table)
        return need <= 0 or self.num_free_blocks >= need

    def may_append(self, seq: Sequence, num_lookahead: int = 0):
        for _ in range(self._blocks_for(seq, num_lookahead) - len(seq.block_table)):
            seq.block_table.append(self._take_free_block())

    def rollback(self, seq: Sequence):
        # the tail blocks were taken by may_append for this sequence alone: never a prefix hit, never hashed
        while len(seq.block_table) > seq.num_blocks:
            block = self.blocks[seq.block_table.pop()]
            assert block.ref_count == 1 and block.hash == -1
            block.ref_count = 0
            self.used_block_ids.remove(block.block_id)
            self.push_free(block.block_id)

    def on_computed(self, seq: Sequence):
        hashed = self.num_hashed_blocks.get(seq.seq_id, 0)
        if seq.num_computed_tokens // self.block_size <= hashed or not self.prefix_caching:
            return  # no block filled since the last call (most calls: one token each)
        # the full blocks of tokens both computed and known (overlap scheduling: a step may have
        # computed a token whose value has not arrived yet)
        num_full = min(seq.num_computed_tokens, len(seq.token_ids)) // self.block_size
        for i in range(hashed, num_full):
            prefix = self.blocks[seq.block_table[i - 1]].hash if i > 0 else -1
            block = self.blocks[seq.block_table[i]]
            block.token_ids = seq.block(i)
            block.hash = compute_hash(block.token_ids, prefix)
            self.hash_to_block_id[block.hash] = block.block_id
        self.num_hashed_blocks[seq.seq_id] = max(hashed, num_full)


@hookimpl
def register_kv_caches(register):
    register(PagedBlockManager)
