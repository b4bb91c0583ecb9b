"""KVCacheSuite: random allocate/compute/free operations keep the allocator contract."""
import dataclasses
import random

import pytest

from nvllm import registry
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence

from nvllm.testing.common import ComponentSuite


class KVCacheSuite(ComponentSuite):
    """Driven the way the scheduler drives it (admit, compute in chunks, append, speculate: reserve
    lookahead slots, write drafted tokens, accept some and roll back the rest; finish, preempt):
    free blocks plus blocks held equal the cache, a sequence reads only K/V computed from its own
    tokens (so a prefix hit has identical tokens, and no hash covers a rejected draft), no block is
    written while another sequence holds it, a hit never covers the whole sequence, a rollback
    leaves just the blocks the tokens need, and every block is free once all are released."""

    family = "kv_cache"
    # operations per random run
    num_ops: int = 300

    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("block_size, num_blocks", [(1, 16), (4, 6), (4, 24)])
    def test_random_operations_keep_the_contract(self, config, block_size, num_blocks, seed):
        config = dataclasses.replace(config, block_size=block_size)
        kv = registry.build("kv_cache", config, num_blocks=num_blocks, block_size=block_size)
        assert kv.num_free_blocks == num_blocks
        rng = random.Random(seed)
        self.live: list[Sequence] = []
        self.slots: dict[tuple[int, int], tuple[int, ...]] = {}  # (block, offset) -> tokens its K/V encodes
        waiting, history = [], []
        for _ in range(self.num_ops):
            op = rng.choices(["admit", "compute", "decode", "speculate", "finish", "preempt"], [35, 30, 14, 6, 8, 7])[0]
            if op == "admit":
                if waiting and rng.random() < 0.5:
                    seq = waiting.pop(rng.randrange(len(waiting)))
                else:
                    seq = Sequence(self._prompt(rng, history, block_size), SamplingParams(), block_size)
                    history.append(list(seq.token_ids))
                if kv.can_allocate(seq):
                    self.admit(kv, seq, block_size)
                else:
                    waiting.append(seq)
            elif op == "compute" and (todo := [s for s in self.live if s.num_computed_tokens < len(s)]):
                seq = rng.choice(todo)
                self.compute(kv, seq, rng.randint(seq.num_computed_tokens + 1, len(seq)), block_size)
            elif op == "decode" and (done := [s for s in self.live if s.num_computed_tokens == len(s) < 48]):
                seq = rng.choice(done)
                seq.append_token(rng.randrange(4))
                if kv.can_append(seq):
                    kv.may_append(seq)
                    assert len(seq.block_table) * block_size >= len(seq), "may_append left tokens without blocks"
                else:
                    self.release(kv, seq)
                    waiting.append(seq)
            elif op == "speculate" and (done := [s for s in self.live if s.num_computed_tokens == len(s) < 48]):
                seq = rng.choice(done)
                seq.append_token(rng.randrange(4))  # the token sampled last step, not yet computed
                drafts = [rng.randrange(4) for _ in range(rng.randint(1, 2 * block_size + 1))]
                if kv.can_append(seq, len(drafts)):
                    self.speculate(kv, seq, drafts, rng.randint(0, len(drafts)), block_size)
                if kv.can_append(seq):  # the next step's token (all drafts accepted: maybe past the slots)
                    kv.may_append(seq)
                else:
                    self.release(kv, seq)
                    waiting.append(seq)
            elif op in ("finish", "preempt") and self.live:
                seq = rng.choice(self.live)
                self.release(kv, seq)
                if op == "preempt":
                    waiting.append(seq)
            self.check(kv, num_blocks, block_size)
        for seq in list(self.live):
            self.release(kv, seq)
        assert kv.num_free_blocks == num_blocks, "blocks leaked after every sequence was released"
        assert 0.0 <= kv.hit_rate <= 1.0

    @staticmethod
    def _prompt(rng, history, block_size) -> list[int]:
        # a 4-token alphabet and reused prefixes: many identical blocks, exact duplicates, prompts
        # that are exact multiples of the block size
        tail = [rng.randrange(4) for _ in range(rng.randrange(3 * block_size + 2))]
        if history and rng.random() < 0.6:
            base = rng.choice(history)
            tail = base[:rng.randint(0, len(base))] + tail
        return tail or [rng.randrange(4)]

    def admit(self, kv, seq: Sequence, block_size: int):
        kv.allocate(seq)
        self.live.append(seq)
        table = seq.block_table
        assert len(table) * block_size >= len(seq), "allocate left tokens without blocks"
        assert 0 <= seq.num_computed_tokens < len(seq), "a prefix hit covered the whole sequence"

    def compute(self, kv, seq: Sequence, upto: int, block_size: int):
        """The model writes K/V for positions [num_computed_tokens, upto), then postprocess reports it."""
        others = {b for s in self.live if s is not seq for b in s.block_table}
        for p in range(seq.num_computed_tokens, upto):
            block = seq.block_table[p // block_size]
            assert block not in others, f"writing block {block}, which another sequence holds"
            self.slots[block, p % block_size] = tuple(seq.token_ids[:p + 1])
        seq.num_computed_tokens = upto
        kv.on_computed(seq)

    def speculate(self, kv, seq: Sequence, drafts: list[int], accepted: int, block_size: int):
        """A verify step: slots reserved for the drafts, K/V written for the last token and every
        draft, `accepted` drafts and one more token appended, the rest rolled back."""
        kv.may_append(seq, len(drafts))
        assert len(seq.block_table) * block_size >= len(seq) + len(drafts), "may_append left drafts without slots"
        history = seq.token_ids + drafts
        others = {b for s in self.live if s is not seq for b in s.block_table}
        for p in range(len(seq) - 1, len(history)):
            block = seq.block_table[p // block_size]
            assert block not in others, f"writing block {block}, which another sequence holds"
            self.slots[block, p % block_size] = tuple(history[:p + 1])
        for token_id in drafts[:accepted]:
            seq.append_token(token_id)
        seq.num_computed_tokens = len(seq)  # the last token and the accepted drafts
        seq.append_token(4)  # the target's own token after them: not computed yet
        kv.on_computed(seq)
        kv.rollback(seq)
        assert len(seq.block_table) <= -(-len(seq) // block_size), "rollback left blocks no token needs"

    def release(self, kv, seq: Sequence):
        kv.deallocate(seq)
        self.live.remove(seq)
        assert not seq.block_table and seq.num_computed_tokens == 0, "deallocate must reset the sequence"

    def check(self, kv, num_blocks: int, block_size: int):
        held = set()
        for seq in self.live:
            table = seq.block_table
            assert len(set(table)) == len(table), "a block twice in one block table"
            assert all(0 <= b < num_blocks for b in table), "block id out of range"
            held.update(table)
            for p in range(seq.num_computed_tokens):  # what attention will read as this sequence's past
                assert self.slots.get((table[p // block_size], p % block_size)) == tuple(seq.token_ids[:p + 1]), \
                    f"sequence {seq.seq_id} position {p} holds K/V of other tokens"
        assert len(held) + kv.num_free_blocks == num_blocks, "free blocks + held blocks != the cache"
