"""The scheduler's side of speculative decoding, without a model: slots for drafts come out of
what is left (budget, max_tokens, max_model_len, free blocks) and never preempt anyone; a verified
run is appended, counted and rolled back so that the prefix cache only ever holds accepted tokens."""
from nvllm import registry
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence
from nvllm.testing.scheduler import run_step

# the most draft slots a decoding sequence may reserve: what the engine passes to schedule()
LOOKAHEAD = 4


def scheduler(num_blocks=64, block_size=4, budget=64, max_model_len=64, name="fcfs"):
    load_plugins()
    kv = registry.build("kv_cache", {"name": "paged", "block_size": block_size}, num_blocks=num_blocks,
                        block_size=block_size)
    return registry.build("scheduler", name, kv_cache=kv, max_num_seqs=8, max_num_batched_tokens=budget,
                          max_model_len=max_model_len, eos_token_ids=frozenset({0}))


def decoding(sched, prompt, max_tokens=32, first=7):
    """A request past its prefill: its prompt computed and one sampled token appended."""
    seq = Sequence(prompt, SamplingParams(temperature=0, max_tokens=max_tokens), sched.kv_cache.block_size)
    sched.add(seq)
    plan = sched.schedule(LOOKAHEAD)
    assert plan.seqs == [seq]
    run_step(sched, plan, [first])
    return seq


def test_slots_come_out_of_what_is_left():
    sched = scheduler(budget=64, max_model_len=20)
    roomy = decoding(sched, [1, 2, 3])
    short = decoding(sched, [1, 2, 3], max_tokens=3)  # 1 generated, 2 to go: the run holds at most 2
    near_end = decoding(sched, list(range(1, 17)))  # 17 tokens of max_model_len 20
    plan = sched.schedule(LOOKAHEAD)
    assert plan.lookahead == [4, 1, 2]
    assert plan.seqs == [roomy, short, near_end]
    for seq, slots in zip(plan.seqs, plan.lookahead):
        assert len(seq.block_table) * 4 >= len(seq) + slots


def test_budget_bounds_the_drafts():
    sched = scheduler(budget=64, max_model_len=64)
    seqs = [decoding(sched, [i + 1] * 3) for i in range(3)]
    sched.max_num_batched_tokens = 5  # 3 tokens, then 2 slots to share
    plan = sched.schedule(LOOKAHEAD)
    assert plan.seqs == seqs and plan.lookahead == [2, 0, 0]
    assert plan.total_tokens + sum(plan.lookahead) == 5


def test_a_draft_never_preempts():
    sched = scheduler(num_blocks=4, block_size=4)
    a = decoding(sched, [1, 2, 3])  # 4 tokens: one full block
    b = decoding(sched, [4, 5, 6, 7, 8, 9, 10])  # 8 tokens: two blocks
    assert sched.kv_cache.num_free_blocks == 1
    plan = sched.schedule(LOOKAHEAD)
    assert sched.num_preemptions == 0 and set(plan.seqs) == {a, b}
    # a's drafts take the last free block; b's would need another, so b drafts nothing (and nobody is preempted)
    slots = dict(zip(plan.seqs, plan.lookahead))
    assert (slots[a], slots[b]) == (4, 0)


def test_a_verified_run_is_appended_counted_and_rolled_back():
    sched = scheduler(block_size=4)
    kv = sched.kv_cache
    seq = decoding(sched, [1, 2, 3, 4, 5, 6])  # 7 tokens, 6 computed, two blocks
    plan = sched.schedule(LOOKAHEAD)
    assert plan.seqs == [seq] and plan.lookahead == [4]  # slots up to position 10: three blocks
    assert len(seq.block_table) == 3
    plan.drafts = [[8, 9, 10, 11]]
    free_before = kv.num_free_blocks
    run_step(sched, plan, [[8, 12]])  # draft 8 accepted, then the model's own 12 instead of 9
    assert seq.token_ids == [1, 2, 3, 4, 5, 6, 7, 8, 12] and seq.num_computed_tokens == 8
    assert len(seq.block_table) == 3 and kv.num_free_blocks == free_before  # 9 tokens still need three blocks
    # the two full blocks are in the prefix cache with the tokens they hold, the third (a rejected
    # draft's K/V in it) is not
    hashed = [kv.blocks[b].token_ids for b in seq.block_table if kv.blocks[b].hash != -1]
    assert hashed == [[1, 2, 3, 4], [5, 6, 7, 8]]
    plan = sched.schedule(LOOKAHEAD)
    assert plan.seqs == [seq] and plan.lookahead == [4]
    plan.drafts = [[1, 1, 1, 1]]
    run_step(sched, plan, [[3]])  # every draft rejected: slots up to position 12 go back
    assert len(seq) == 10 and seq.num_computed_tokens == 9 and len(seq.block_table) == 3
    assert kv.num_free_blocks == free_before
    later = Sequence([1, 2, 3, 4, 5, 6, 7, 8, 12, 3, 9], SamplingParams(), 4)
    kv.allocate(later)
    assert later.num_computed_tokens == 8  # hits on the accepted tokens' blocks only


def test_slots_a_drafter_left_empty_go_back():
    """A sequence reserves slots and the drafter proposes nothing: the step is a plain decode, and
    the slots it reserved are released after it."""
    sched = scheduler(block_size=4)
    kv = sched.kv_cache
    seq = decoding(sched, [1, 2, 3, 4, 5, 6])  # 7 tokens: two blocks
    free_before = kv.num_free_blocks
    plan = sched.schedule(LOOKAHEAD)
    assert plan.lookahead == [4] and len(seq.block_table) == 3  # slots up to position 10
    plan.drafts = [[]]
    run_step(sched, plan, [8])
    assert seq.token_ids[-1] == 8 and len(seq.block_table) == 2 and kv.num_free_blocks == free_before


def test_an_eos_inside_the_run_finishes_there():
    sched = scheduler()
    seq = decoding(sched, [1, 2, 3])
    plan = sched.schedule(LOOKAHEAD)
    plan.drafts = [[5, 0, 6]]
    finished = run_step(sched, plan, [[5, 0, 6, 9]]).finished
    assert finished == [seq] and seq.completion_token_ids == [7, 5, 0] and seq.finish_reason == "stop"
    assert sched.kv_cache.num_free_blocks == sched.kv_cache.num_blocks
