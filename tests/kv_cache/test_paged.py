"""PagedBlockManager: block accounting and prefix caching.

The property test drives the manager the way the engine does (allocate on admission, compute,
append, free or preempt) and, besides the bookkeeping invariants, keeps a shadow of what the
model would have written into every cache slot: the K/V at position p depends on tokens[0..p],
so a slot's content is modelled as that prefix. Whatever a sequence reads (its first
`num_computed_tokens` positions, prefix hits included) must be its own prefix, and nothing may
ever be written into a block another sequence shares or can still hit."""
import copy
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nvllm.sequence import Sequence
from nvllm.kv_cache.paged import PagedBlockManager
from nvllm.sampling_params import SamplingParams


def make_manager(block_size: int, num_blocks: int, prefix_caching: bool = True) -> PagedBlockManager:
    config = PagedBlockManager.Config(block_size=block_size, prefix_caching=prefix_caching)
    return PagedBlockManager(config, num_blocks=num_blocks, block_size=block_size)


def make_seq(token_ids, block_size: int) -> Sequence:
    return Sequence(list(token_ids), SamplingParams(max_tokens=1000, ignore_eos=True), block_size)


def compute(mgr: PagedBlockManager, seq: Sequence, upto: int | None = None):
    """What the scheduler's update does after a step: the K/V of the first `upto` tokens now exist."""
    seq.num_computed_tokens = len(seq) if upto is None else upto
    mgr.on_computed(seq)


def check_manager(mgr: PagedBlockManager, live: list[Sequence]):
    """Bookkeeping invariants; `live` is every sequence currently holding blocks."""
    n = mgr.num_blocks
    free = list(mgr.free_block_ids)
    assert len(free) == len(set(free)) == mgr.num_free_blocks, "free list has duplicates"
    assert all(0 <= b < n for b in free)
    used = mgr.used_block_ids
    assert set(free).isdisjoint(used), "a block is both free and used"
    assert len(free) + len(used) == n, "blocks leaked"
    refs = Counter(b for seq in live for b in seq.block_table)
    assert set(refs) == used, "used blocks differ from the union of live block tables"
    for block in mgr.blocks:
        assert block.ref_count >= 0
        assert block.ref_count == refs.get(block.block_id, 0), f"block {block.block_id} ref count"
    for b in free:
        assert mgr.blocks[b].ref_count == 0
    assert sum(b.ref_count for b in mgr.blocks) == sum(len(s.block_table) for s in live)
    for h, b in mgr.hash_to_block_id.items():
        assert mgr.blocks[b].hash == h, f"hash table entry for block {b} is stale"
    for seq in live:
        assert len(seq.block_table) == len(set(seq.block_table)), "a block twice in one table"
        assert seq.num_computed_tokens <= len(seq)
        assert len(seq.block_table) * mgr.block_size >= seq.num_computed_tokens
        if mgr.prefix_caching:
            assert mgr.num_hashed_blocks.get(seq.seq_id, 0) <= seq.num_computed_tokens // mgr.block_size


class KVShadow:
    """What each cache slot would hold: slots[(block, offset)] = the token prefix it encodes."""

    def __init__(self, mgr: PagedBlockManager):
        self.mgr = mgr
        self.slots: dict[tuple[int, int], tuple[int, ...]] = {}

    def check_readable(self, seq: Sequence, upto: int):
        """The model reads positions [0, upto): they must hold this sequence's own K/V."""
        B = self.mgr.block_size
        for p in range(upto):
            bid = seq.block_table[p // B]
            assert self.slots.get((bid, p % B)) == tuple(seq.token_ids[: p + 1]), (
                f"seq {seq.seq_id} position {p} (block {bid}) holds another prefix's K/V")

    def write(self, seq: Sequence, start: int, end: int):
        B, mgr = self.mgr.block_size, self.mgr
        registered = set(mgr.hash_to_block_id.values())
        for p in range(start, end):
            bid = seq.block_table[p // B]
            assert mgr.blocks[bid].ref_count == 1, f"writing block {bid}, which another sequence shares"
            assert bid not in registered, f"writing block {bid}, which the prefix cache serves"
            self.slots[(bid, p % B)] = tuple(seq.token_ids[: p + 1])

    def check_registered(self):
        """Every block the prefix cache can serve is fully written, with its own token ids."""
        B, mgr = self.mgr.block_size, self.mgr
        for bid in mgr.hash_to_block_id.values():
            block = mgr.blocks[bid]
            assert len(block.token_ids) == B
            contents = [self.slots.get((bid, o)) for o in range(B)]
            assert all(c is not None for c in contents), f"cached block {bid} was never fully written"
            full = contents[-1]
            assert len(full) % B == 0
            for o, c in enumerate(contents):
                assert c == full[: len(full) - B + o + 1], f"cached block {bid} mixes prefixes"
            assert list(full[-B:]) == block.token_ids


class PagedMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.mgr = None

    @initialize(block_size=st.integers(1, 8), num_blocks=st.integers(1, 24), prefix_caching=st.booleans())
    def setup(self, block_size, num_blocks, prefix_caching):
        self.B = block_size
        self.mgr = make_manager(block_size, num_blocks, prefix_caching)
        self.shadow = KVShadow(self.mgr)
        self.live: list[Sequence] = []
        self.waiting: list[Sequence] = []  # preempted: re-allocated later with their full token list
        self.history: list[list[int]] = []  # computed token lists, so new prompts share prefixes
        self.num_hits = 0

    @rule(data=st.data())
    def allocate_new(self, data):
        if self.waiting and data.draw(st.booleans(), label="readmit"):
            seq = self.waiting.pop(data.draw(st.integers(0, len(self.waiting) - 1)))
        else:
            tokens = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=3 * self.B), label="prompt")
            seq = make_seq(tokens, self.B)
        self._admit(seq, data)

    @precondition(lambda self: self.mgr is not None and self.history)
    @rule(data=st.data())
    def allocate_shared(self, data):
        """A prefix of a sequence computed before (often all of it) plus a short tail, so that
        prompts share whole blocks and prefix hits really happen."""
        base = data.draw(st.sampled_from(self.history), label="base")
        cut = data.draw(st.one_of(st.just(len(base)), st.integers(0, len(base))), label="cut")
        tokens = base[:cut] + data.draw(st.lists(st.integers(0, 1), max_size=self.B + 1), label="tail")
        tokens = tokens[: self.mgr.num_blocks * self.B + 1] or [0]
        self._admit(make_seq(tokens, self.B), data)

    def _admit(self, seq: Sequence, data):
        mgr = self.mgr
        if not mgr.can_allocate(seq):
            # can_allocate must be exact, not just safe: the allocation really does not fit
            mgr_copy, seq_copy = copy.deepcopy((mgr, seq))
            with pytest.raises(IndexError):
                mgr_copy.allocate(seq_copy)
            self.waiting.append(seq)
            return
        free_before = mgr.num_free_blocks
        mgr.allocate(seq)
        self.live.append(seq)
        B, hit = self.B, seq.num_computed_tokens
        assert len(seq.block_table) == seq.num_blocks
        assert hit % B == 0
        assert hit < len(seq), "a prefix hit covered the whole sequence"
        assert hit <= (len(seq) - 1) // B * B
        if not mgr.prefix_caching:
            assert hit == 0
        for i in range(hit // B):
            assert mgr.blocks[seq.block_table[i]].token_ids == seq.block(i)
        self.shadow.check_readable(seq, hit)
        for b in seq.block_table[hit // B:]:
            assert mgr.blocks[b].ref_count == 1 and mgr.blocks[b].hash == -1
        # revived hits and fresh blocks both came out of the free list
        assert free_before - mgr.num_free_blocks == sum(1 for b in seq.block_table if mgr.blocks[b].ref_count == 1)
        self.num_hits += hit // B
        if data.draw(st.booleans(), label="prefill now"):  # the step that admitted it runs it
            self._compute(seq, len(seq))

    @precondition(lambda self: self.mgr is not None and any(s.num_computed_tokens < len(s) for s in self.live))
    @rule(data=st.data())
    def compute_step(self, data):
        seq = data.draw(st.sampled_from([s for s in self.live if s.num_computed_tokens < len(s)]))
        start = seq.num_computed_tokens
        # usually the whole rest (the FCFS step); sometimes a chunk, as a chunked prefill would
        end = len(seq) if data.draw(st.booleans()) else data.draw(st.integers(start + 1, len(seq)))
        self._compute(seq, end)

    def _compute(self, seq: Sequence, end: int):
        start = seq.num_computed_tokens
        self.shadow.check_readable(seq, start)
        self.shadow.write(seq, start, end)
        compute(self.mgr, seq, end)
        self.history.append(list(seq.token_ids[:end]))
        B = self.B
        for i in range(end // B):
            block = self.mgr.blocks[seq.block_table[i]]
            if self.mgr.prefix_caching:
                assert block.hash != -1 and block.token_ids == seq.block(i)
        registered = set(self.mgr.hash_to_block_id.values())
        for b in seq.block_table[end // B:]:
            assert b not in registered, "a block not fully computed is in the prefix cache"

    @precondition(lambda self: self.mgr is not None and any(s.num_computed_tokens == len(s) for s in self.live))
    @rule(data=st.data())
    def append(self, data):
        mgr = self.mgr
        seq = data.draw(st.sampled_from([s for s in self.live if s.num_computed_tokens == len(s)]))
        for t in data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=self.B + 1), label="new tokens"):
            seq.append_token(t)
        if mgr.can_append(seq):
            mgr.may_append(seq)
            assert len(seq.block_table) == seq.num_blocks
        else:
            mgr_copy, seq_copy = copy.deepcopy((mgr, seq))
            with pytest.raises(IndexError):
                mgr_copy.may_append(seq_copy)
            self._release(seq, preempt=True)  # what the scheduler would do

    @precondition(lambda self: self.mgr is not None and self.live)
    @rule(data=st.data())
    def free(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self._release(seq, preempt=data.draw(st.booleans(), label="preempt"))

    def _release(self, seq: Sequence, preempt: bool):
        self.mgr.deallocate(seq)
        assert seq.block_table == [] and seq.num_computed_tokens == 0 and seq.seq_id not in self.mgr.num_hashed_blocks
        self.live.remove(seq)
        if preempt:
            self.waiting.append(seq)

    @invariant()
    def consistent(self):
        if self.mgr is None:
            return
        check_manager(self.mgr, self.live)
        self.shadow.check_registered()
        if not self.mgr.prefix_caching:
            assert not self.mgr.hash_to_block_id and self.mgr.num_hit_tokens == 0
        assert self.mgr.num_hit_tokens == self.num_hits * self.B
        assert 0.0 <= self.mgr.hit_rate <= 1.0


# no explain phase: on a failure it replays the example for minutes before reporting it
PagedMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
    phases=[p for p in Phase if p != Phase.explain])
TestPagedStateMachine = PagedMachine.TestCase


# -- plain unit tests ----------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [1, 2, 4, 8])
@pytest.mark.parametrize("num_prompt_blocks", [1, 2, 3])
def test_duplicate_exact_multiple_prompt_hits_all_but_last_block(block_size, num_prompt_blocks):
    mgr = make_manager(block_size, num_blocks=8)
    prompt = [i % 3 for i in range(block_size * num_prompt_blocks)]
    a = make_seq(prompt, block_size)
    mgr.allocate(a)
    assert a.num_computed_tokens == 0
    compute(mgr, a)
    b = make_seq(prompt, block_size)
    assert mgr.can_allocate(b)
    mgr.allocate(b)
    hit_blocks = num_prompt_blocks - 1
    assert b.num_computed_tokens == hit_blocks * block_size
    assert b.block_table[:hit_blocks] == a.block_table[:hit_blocks]
    assert b.block_table[-1] != a.block_table[-1]  # the block with the last prompt token is its own
    for bid in a.block_table[:hit_blocks]:
        assert mgr.blocks[bid].ref_count == 2
    check_manager(mgr, [a, b])


def test_prompt_one_past_a_block_boundary_hits_every_full_block():
    mgr = make_manager(4, num_blocks=8)
    prompt = [1, 2, 3, 0, 1, 2, 3, 0, 1]
    a = make_seq(prompt, 4)
    mgr.allocate(a)
    compute(mgr, a)
    b = make_seq(prompt, 4)
    mgr.allocate(b)
    assert b.num_computed_tokens == 8
    assert b.block_table[:2] == a.block_table[:2]


def test_hit_stops_at_first_differing_block():
    mgr = make_manager(2, num_blocks=16)
    a = make_seq([0, 1, 2, 3, 0, 1, 2], 2)
    mgr.allocate(a)
    compute(mgr, a)
    b = make_seq([0, 1, 2, 0, 0, 1, 2], 2)  # block 1 differs; block 2 equal but its chain is not
    mgr.allocate(b)
    assert b.num_computed_tokens == 2
    assert b.block_table[0] == a.block_table[0]
    assert set(b.block_table[1:]).isdisjoint(a.block_table)


def test_freed_block_is_revived_by_a_hit():
    mgr = make_manager(4, num_blocks=3)
    prompt = [1, 2, 3, 0, 1, 2, 3, 0, 1]
    a = make_seq(prompt, 4)
    mgr.allocate(a)
    compute(mgr, a)
    hashed = a.block_table[:2]
    mgr.deallocate(a)
    assert mgr.num_free_blocks == 3
    b = make_seq(prompt, 4)
    assert mgr.can_allocate(b)
    mgr.allocate(b)
    assert b.num_computed_tokens == 8
    assert b.block_table[:2] == hashed
    assert mgr.num_free_blocks == 0
    for bid in hashed:
        assert bid not in mgr.free_block_ids and mgr.blocks[bid].ref_count == 1
    check_manager(mgr, [b])


def test_can_allocate_counts_revived_blocks_against_the_free_list():
    mgr = make_manager(4, num_blocks=3)
    prompt = [1, 2, 3, 0, 1, 2, 3, 0, 1]
    a = make_seq(prompt, 4)
    mgr.allocate(a)
    compute(mgr, a)
    hashed = a.block_table[:2]
    mgr.deallocate(a)
    x = make_seq([3], 4)  # takes a's partial (unhashed) last block: freed last, reused first
    mgr.allocate(x)
    assert x.block_table[0] not in hashed
    assert mgr.num_free_blocks == 2
    b = make_seq(prompt, 4)
    # two hits, both on free blocks, plus one fresh block: 3 from a free list of 2
    assert not mgr.can_allocate(b)
    mgr.deallocate(x)
    assert mgr.can_allocate(b)
    mgr.allocate(b)
    assert b.num_computed_tokens == 8
    check_manager(mgr, [b])


def test_reused_block_loses_its_stale_hash():
    mgr = make_manager(4, num_blocks=2)
    prompt = [1, 1, 1, 1, 2]
    a = make_seq(prompt, 4)
    mgr.allocate(a)
    compute(mgr, a)
    old_block = a.block_table[0]
    old_hash = mgr.blocks[old_block].hash
    assert mgr.hash_to_block_id[old_hash] == old_block
    mgr.deallocate(a)
    assert mgr.hash_to_block_id[old_hash] == old_block  # freed blocks keep their hash
    c = make_seq([3] * 8, 4)  # consumes every free block, the hashed one included
    mgr.allocate(c)
    assert old_block in c.block_table
    assert old_hash not in mgr.hash_to_block_id
    assert mgr.blocks[old_block].hash == -1
    compute(mgr, c)
    mgr.deallocate(c)
    again = make_seq(prompt, 4)
    mgr.allocate(again)
    assert again.num_computed_tokens == 0, "hit on a block whose contents were overwritten"
    check_manager(mgr, [again])


def test_no_hits_on_blocks_not_yet_computed():
    mgr = make_manager(4, num_blocks=16)
    prompt = [0, 1, 2, 3] * 3 + [1]
    a = make_seq(prompt, 4)
    mgr.allocate(a)  # scheduled, but the model has not run it
    b = make_seq(prompt, 4)
    mgr.allocate(b)
    assert b.num_computed_tokens == 0
    assert set(a.block_table).isdisjoint(b.block_table)
    compute(mgr, a, upto=6)  # a chunk: only block 0 is complete
    c = make_seq(prompt, 4)
    mgr.allocate(c)
    assert c.num_computed_tokens == 4 and c.block_table[0] == a.block_table[0]
    compute(mgr, a)
    d = make_seq(prompt, 4)
    mgr.allocate(d)
    assert d.num_computed_tokens == 12 and d.block_table[:3] == a.block_table[:3]
    check_manager(mgr, [a, b, c, d])


def test_generated_tokens_become_cacheable_once_computed():
    mgr = make_manager(4, num_blocks=8)
    a = make_seq([1, 2, 3], 4)
    mgr.allocate(a)
    compute(mgr, a)
    a.append_token(0)  # sampled; its K/V is written in the next step
    assert mgr.can_append(a)
    mgr.may_append(a)
    assert len(a.block_table) == 1
    probe = make_seq([1, 2, 3, 0, 2], 4)
    assert mgr._cached_prefix(probe) == []  # the 4th token is not computed yet
    compute(mgr, a)
    b = make_seq([1, 2, 3, 0, 2], 4)
    mgr.allocate(b)
    assert b.num_computed_tokens == 4 and b.block_table[0] == a.block_table[0]


def test_may_append_takes_a_block_only_at_a_boundary():
    mgr = make_manager(2, num_blocks=2)
    a = make_seq([1, 2], 2)
    mgr.allocate(a)
    compute(mgr, a)
    a.append_token(3)
    assert mgr.can_append(a)
    mgr.may_append(a)
    assert len(a.block_table) == 2 and mgr.num_free_blocks == 0
    compute(mgr, a)
    a.append_token(0)
    assert mgr.can_append(a)  # still inside block 1
    mgr.may_append(a)
    compute(mgr, a)
    a.append_token(1)
    assert not mgr.can_append(a)
    mgr.deallocate(a)
    assert mgr.num_free_blocks == 2
    check_manager(mgr, [])


def test_prefix_caching_off_never_hits():
    mgr = make_manager(2, num_blocks=16, prefix_caching=False)
    prompt = [1, 2, 1, 2, 1, 2, 1]
    seqs = []
    for _ in range(3):
        s = make_seq(prompt, 2)
        mgr.allocate(s)
        assert s.num_computed_tokens == 0
        compute(mgr, s)
        seqs.append(s)
    assert not mgr.hash_to_block_id
    assert len({b for s in seqs for b in s.block_table}) == 12
    assert mgr.hit_rate == 0.0
    check_manager(mgr, seqs)


def test_hit_rate_accounting():
    mgr = make_manager(4, num_blocks=16)
    assert mgr.hit_rate == 0.0
    prompt = list(range(4)) * 2  # 8 tokens
    a = make_seq(prompt, 4)
    mgr.allocate(a)
    compute(mgr, a)
    assert (mgr.num_lookup_tokens, mgr.num_hit_tokens) == (8, 0)
    b = make_seq(prompt, 4)
    mgr.allocate(b)
    assert (mgr.num_lookup_tokens, mgr.num_hit_tokens) == (16, 4)
    c = make_seq(prompt + [0, 1, 2, 3, 0], 4)
    mgr.allocate(c)
    assert (mgr.num_lookup_tokens, mgr.num_hit_tokens) == (29, 12)  # + 8: blocks 0 and 1 (a's)
    assert mgr.hit_rate == pytest.approx(12 / 29)
    d = make_seq([3, 3, 3, 3, 3], 4)
    mgr.allocate(d)
    assert mgr.hit_rate == pytest.approx(12 / 34)
