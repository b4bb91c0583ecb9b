"""FCFSScheduler driven without a model: each step, schedule() gives a StepPlan, then made-up
sampled tokens go to update() (through nvllm.testing.scheduler.run_step), as the engine does with
the model's output.

The workload test also keeps a shadow of the K/V cache (what each slot would hold: the K/V at
position p depends on tokens[0..p], so a slot is modelled as that prefix) and checks, every step,
that what each scheduled sequence reads from its block table is its own prefix, through
preemption, recompute and prefix hits."""
from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nvllm.sequence import Sequence, SequenceStatus
from nvllm.kv_cache.paged import PagedBlockManager
from nvllm.sampling_params import SamplingParams
from nvllm.scheduler.fcfs import FCFSScheduler
from nvllm.testing.scheduler import run_step

EOS = 3


def make_scheduler(num_blocks, block_size, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64,
                   prefix_caching=False) -> FCFSScheduler:
    config = PagedBlockManager.Config(block_size=block_size, prefix_caching=prefix_caching)
    kv = PagedBlockManager(config, num_blocks=num_blocks, block_size=block_size)
    return FCFSScheduler(FCFSScheduler.Config(), kv_cache=kv, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                         eos_token_ids=frozenset({EOS}))


def add(sched: FCFSScheduler, prompt, max_tokens, ignore_eos=True) -> Sequence:
    seq = Sequence(list(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos),
                   sched.kv_cache.block_size)
    sched.add(seq)
    return seq


def step(sched: FCFSScheduler, sample=lambda seq: 1):
    """One engine step. Returns (the plan's seqs, {seq_id: tokens it runs this step}, finished)."""
    plan = sched.schedule()
    num_scheduled = dict(zip((s.seq_id for s in plan.seqs), plan.num_tokens))
    finished = run_step(sched, plan, [sample(s) for s in plan.seqs]).finished
    return plan.seqs, num_scheduled, finished


def run_all(sched: FCFSScheduler, sample=lambda seq: 1, max_steps=1000):
    finished = []
    for _ in range(max_steps):
        if sched.is_finished():
            return finished
        seqs, _, done = step(sched, sample)
        assert seqs, "the scheduler picked nothing while requests are pending"
        finished += done
    raise AssertionError("requests did not finish")


def check_blocks(sched: FCFSScheduler):
    kv = sched.kv_cache
    live = [s for s in sched.running]
    for s in sched.waiting:
        assert s.block_table == [] and s.num_computed_tokens == 0 and s.status == SequenceStatus.WAITING
    refs = Counter(b for s in live for b in s.block_table)
    free = list(kv.free_block_ids)
    assert len(free) == len(set(free))
    assert set(refs) == kv.used_block_ids
    assert kv.num_free_blocks + len(kv.used_block_ids) == kv.num_blocks
    for block in kv.blocks:
        assert block.ref_count == refs.get(block.block_id, 0)


# -- unit tests --------------------------------------------------------------------------------

def test_prefill_goes_before_decode():
    sched = make_scheduler(num_blocks=16, block_size=4)
    a = add(sched, [1, 2, 3], max_tokens=5)
    seqs, n, _ = step(sched)
    assert seqs == [a] and n[a.seq_id] == 3
    b = add(sched, [4, 5], max_tokens=5)
    seqs, n, _ = step(sched)
    assert seqs == [b] and n == {b.seq_id: 2}, "a waiting sequence is prefilled before any decode"
    assert a.num_completion_tokens == 1
    seqs, n, _ = step(sched)
    assert seqs == [a, b] and n == {a.seq_id: 1, b.seq_id: 1}


def test_max_num_seqs_is_respected_in_prefill_and_decode():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_seqs=2)
    seqs_in = [add(sched, [i, i + 1], max_tokens=3) for i in range(5)]
    seqs, _, _ = step(sched)
    assert seqs == seqs_in[:2]
    seqs, _, _ = step(sched)
    assert seqs == seqs_in[2:4]
    seqs, _, _ = step(sched)
    assert seqs == seqs_in[4:]
    seqs, n, _ = step(sched)  # decode: the two oldest
    assert seqs == seqs_in[:2] and set(n.values()) == {1}


def test_max_num_batched_tokens_is_respected_in_prefill():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_batched_tokens=10, max_model_len=10)
    seqs_in = [add(sched, [1, 2, 3, 4], max_tokens=2) for _ in range(3)]
    seqs, n, _ = step(sched)
    assert seqs == seqs_in[:2] and sum(n.values()) == 8
    seqs, n, _ = step(sched)
    assert seqs == seqs_in[2:] and sum(n.values()) == 4


def test_decode_steps_schedule_one_token_each():
    sched = make_scheduler(num_blocks=32, block_size=2)
    seqs_in = [add(sched, list(range(1, 2 + i)), max_tokens=5) for i in range(3)]
    step(sched)
    for k in range(2, 5):
        seqs, n, _ = step(sched)
        assert seqs == seqs_in and all(v == 1 for v in n.values())
        for s in seqs_in:
            assert s.num_computed_tokens == len(s) - 1 and s.num_completion_tokens == k
            assert len(s.block_table) * 2 >= s.num_computed_tokens


def test_newest_running_sequence_is_preempted_and_later_recomputed_in_full():
    # block_size 2, 2 blocks. a: 2-token prompt (its decode needs a second block), b: 1 token.
    sched = make_scheduler(num_blocks=2, block_size=2)
    a = add(sched, [5, 6], max_tokens=2)
    b = add(sched, [7], max_tokens=3)
    seqs, _, _ = step(sched, sample=lambda s: 10 + s.num_completion_tokens)
    assert seqs == [a, b] and sched.kv_cache.num_free_blocks == 0
    c = add(sched, [8], max_tokens=1)  # cannot be admitted: no free block
    b_blocks = list(b.block_table)
    plan = sched.schedule()  # a's decode needs a block: b, the newest, gives up its own
    assert plan.seqs == [a] and plan.num_tokens == [1]
    assert sched.num_preemptions == 1
    assert b.status == SequenceStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert list(sched.waiting) == [b, c], "the preempted sequence goes to the front of waiting"
    assert list(sched.running) == [a]
    assert a.block_table[-1] in b_blocks
    finished = run_step(sched, plan, [10 + a.num_completion_tokens]).finished
    assert finished == [a] and a.completion_token_ids == [10, 11]
    assert b.token_ids == [7, 10], "preemption keeps the generated tokens"
    check_blocks(sched)

    seqs, n, _ = step(sched, sample=lambda s: 10 + s.num_completion_tokens)
    assert seqs == [b, c]
    assert n[b.seq_id] == 2, "recompute prefills the prompt and the generated tokens"
    assert b.token_ids == [7, 10, 11]
    finished = run_all(sched, sample=lambda s: 10 + s.num_completion_tokens)
    assert b.completion_token_ids == [10, 11, 12] and c.completion_token_ids == [10]
    assert sched.kv_cache.num_free_blocks == 2 and sched.is_finished()


def test_preempted_sequence_recompute_hits_its_own_freed_blocks():
    sched = make_scheduler(num_blocks=4, block_size=2, prefix_caching=True)
    a = add(sched, [1, 2, 3, 4], max_tokens=2)
    b = add(sched, [5, 6, 7], max_tokens=3)
    step(sched, sample=lambda s: 20)
    assert sched.kv_cache.num_free_blocks == 0
    seqs, _, finished = step(sched, sample=lambda s: 21)  # a needs a third block: b is preempted
    assert seqs == [a] and finished == [a] and sched.num_preemptions == 1
    assert list(sched.waiting) == [b] and b.token_ids == [5, 6, 7, 20]
    seqs, n, _ = step(sched, sample=lambda s: 22)
    assert seqs == [b]
    assert b.num_computed_tokens == 4 and n[b.seq_id] == 2, "block [5, 6] was a hit; [7, 20] recomputed"
    run_all(sched, sample=lambda s: 23)
    assert b.completion_token_ids == [20, 22, 23]
    assert sched.kv_cache.num_free_blocks == 4


def test_self_preemption_when_the_only_running_sequence_cannot_grow():
    # infeasible on purpose (3 blocks of tokens, 2 in the cache): the scheduler must not crash,
    # it preempts the sequence itself and returns an empty step
    sched = make_scheduler(num_blocks=2, block_size=2)
    a = add(sched, [1, 2, 3], max_tokens=4)
    step(sched)  # prefill: 4 tokens, 2 blocks
    step(sched)  # decode: 5 tokens, a third block needed next
    plan = sched.schedule()
    assert plan.seqs == [] and sched.num_preemptions == 1 and list(sched.waiting) == [a]
    assert sched.kv_cache.num_free_blocks == 2


def test_every_request_finishes_with_max_tokens_and_no_block_leaks():
    sched = make_scheduler(num_blocks=6, block_size=2, max_num_seqs=3, max_num_batched_tokens=12,
                           max_model_len=12)
    seqs_in = [add(sched, [1 + i] * (1 + i % 4), max_tokens=2 + i % 5) for i in range(7)]
    finished = run_all(sched, sample=lambda s: s.num_completion_tokens)
    assert sorted(s.seq_id for s in finished) == sorted(s.seq_id for s in seqs_in)
    for s in seqs_in:
        assert s.is_finished and s.finish_reason == "length"
        assert s.completion_token_ids == list(range(s.sampling_params.max_tokens))
    assert sched.num_preemptions > 0, "the cache was meant to be too small for everyone at once"
    assert sched.kv_cache.num_free_blocks == 6
    check_blocks(sched)


def test_eos_stops_unless_ignored():
    sched = make_scheduler(num_blocks=16, block_size=4)
    stops = add(sched, [1, 2], max_tokens=10, ignore_eos=False)
    ignores = add(sched, [1, 2], max_tokens=4, ignore_eos=True)
    tokens = [0, 1, EOS, 2, 0]
    run_all(sched, sample=lambda s: tokens[s.num_completion_tokens])
    assert stops.finish_reason == "stop" and stops.completion_token_ids == [0, 1, EOS]
    assert ignores.finish_reason == "length" and ignores.completion_token_ids == [0, 1, EOS, 2]
    assert sched.kv_cache.num_free_blocks == 16


def test_eos_on_the_first_token_stops_at_prefill():
    sched = make_scheduler(num_blocks=4, block_size=4)
    s = add(sched, [1, 2], max_tokens=5, ignore_eos=False)
    _, _, finished = step(sched, sample=lambda s: EOS)
    assert finished == [s] and s.finish_reason == "stop" and s.completion_token_ids == [EOS]


def test_max_model_len_ends_a_sequence():
    sched = make_scheduler(num_blocks=16, block_size=4, max_model_len=6, max_num_batched_tokens=6)
    s = add(sched, [1, 2, 3, 4], max_tokens=10)
    run_all(sched)
    assert s.finish_reason == "max_model_len" and len(s) == 6 and s.num_completion_tokens == 2


def test_decode_step_respects_max_num_batched_tokens():
    sched = make_scheduler(num_blocks=16, block_size=1, max_num_seqs=4, max_num_batched_tokens=3,
                           max_model_len=3)
    for i in range(4):
        add(sched, [i], max_tokens=2)
    for _ in range(3):  # prefill 3, prefill 1, decode 4
        seqs, n, _ = step(sched)
        assert sum(n.values()) <= 3


# -- random workloads ------------------------------------------------------------------------

class KVShadow:
    """What each cache slot would hold: slots[(block, offset)] = the token prefix it encodes."""

    def __init__(self, kv):
        self.kv = kv
        self.slots = {}

    def run(self, seq: Sequence, num_tokens: int):
        """The model's step for `seq`, which runs `num_tokens` tokens: read [0, computed), write
        [computed, computed + num_tokens)."""
        B, kv = self.kv.block_size, self.kv
        start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_tokens
        assert len(seq.block_table) * B >= end, "block table does not cover the scheduled tokens"
        for p in range(start):
            bid = seq.block_table[p // B]
            assert self.slots.get((bid, p % B)) == tuple(seq.token_ids[: p + 1]), (
                f"seq {seq.seq_id} position {p} (block {bid}) holds another prefix's K/V")
        registered = set(kv.hash_to_block_id.values())
        for p in range(start, end):
            bid = seq.block_table[p // B]
            assert kv.blocks[bid].ref_count == 1, f"writing block {bid}, which another sequence shares"
            assert bid not in registered, f"writing block {bid}, which the prefix cache serves"
            self.slots[(bid, p % B)] = tuple(seq.token_ids[: p + 1])


@st.composite
def workloads(draw):
    block_size = draw(st.integers(1, 4))
    num_blocks = draw(st.integers(1 if block_size > 1 else 2, 10))
    capacity = num_blocks * block_size  # tokens a single request may reach (prompt + max_tokens)
    prefix_caching = draw(st.booleans())
    requests, prompts = [], []
    # mostly long requests in a small cache, several at once: preemption is the common case
    for _ in range(draw(st.integers(1, 8).map(lambda n: 9 - n))):
        total = draw(st.integers(2, min(capacity, 16)).map(lambda t: min(capacity, 16) + 2 - t))
        prompt_len = draw(st.integers(1, total - 1))
        if prompts and draw(st.booleans()):  # share a prefix with an earlier prompt
            base = draw(st.sampled_from(prompts))
            prompt = (base + draw(st.lists(st.integers(0, 2), min_size=prompt_len, max_size=prompt_len)))[:prompt_len]
        else:
            prompt = draw(st.lists(st.integers(0, 2), min_size=prompt_len, max_size=prompt_len))
        prompts.append(prompt)
        max_tokens = total - prompt_len
        ignore_eos = draw(st.booleans())
        # what the "model" samples at each completion index; EOS may come early
        token = st.integers(0, 9).map(lambda x: EOS if x == 9 else x % 3)
        samples = draw(st.lists(token, min_size=max_tokens, max_size=max_tokens))
        arrival = draw(st.integers(0, 6))  # the step before which it is added (shrinks to 0)
        requests.append((prompt, max_tokens, ignore_eos, samples, arrival))
    longest = max(len(p) + m for p, m, *_ in requests)
    max_model_len = draw(st.integers(longest, longest + 4))
    max_num_batched_tokens = draw(st.integers(max_model_len, max_model_len + 8))
    # max_num_seqs <= max_num_batched_tokens: otherwise a decode step overflows the token budget
    # (see test_decode_step_respects_max_num_batched_tokens)
    max_num_seqs = draw(st.integers(1, min(6, max_num_batched_tokens)))
    return dict(block_size=block_size, num_blocks=num_blocks, prefix_caching=prefix_caching,
                max_model_len=max_model_len, max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs, requests=requests)


def expected_completion(max_tokens, ignore_eos, samples):
    if not ignore_eos and EOS in samples:
        n = samples.index(EOS) + 1
        return samples[:n], "stop"
    return samples[:max_tokens], "length"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[p for p in Phase if p != Phase.explain])
@given(workloads())
def test_random_workloads_run_to_completion(w):
    sched = make_scheduler(num_blocks=w["num_blocks"], block_size=w["block_size"],
                           max_num_seqs=w["max_num_seqs"], max_num_batched_tokens=w["max_num_batched_tokens"],
                           max_model_len=w["max_model_len"], prefix_caching=w["prefix_caching"])
    kv, shadow = sched.kv_cache, KVShadow(sched.kv_cache)
    B = w["block_size"]
    pending = sorted(enumerate(w["requests"]), key=lambda r: r[1][4])
    info, finished_ids = {}, []
    total_tokens = sum(len(expected_completion(m, ie, s)[0]) for _, m, ie, s, _ in w["requests"])
    step_no = 0
    while pending or not sched.is_finished():
        assert step_no <= total_tokens, "more steps than generated tokens: the scheduler is stuck"
        # arrivals; with nothing in flight the next ones arrive now
        while pending and (pending[0][1][4] <= step_no or sched.is_finished()):
            i, (prompt, max_tokens, ignore_eos, samples, _) = pending.pop(0)
            seq = add(sched, prompt, max_tokens, ignore_eos)
            info[seq.seq_id] = (prompt, samples, *expected_completion(max_tokens, ignore_eos, samples))
        step_no += 1

        waiting_before, running_before = list(sched.waiting), list(sched.running)
        head_fits = bool(waiting_before) and kv.can_allocate(waiting_before[0])
        preemptions_before = sched.num_preemptions
        plan = sched.schedule()
        seqs = plan.seqs

        # never an empty step while requests are pending: the engine raises on one
        assert seqs, "the scheduler picked nothing while requests are pending"
        assert len(seqs) <= w["max_num_seqs"]
        assert len({s.seq_id for s in seqs}) == len(seqs)
        assert sum(plan.num_tokens) <= w["max_num_batched_tokens"]
        for s, n in zip(seqs, plan.num_tokens, strict=True):
            assert s.status == SequenceStatus.RUNNING and n >= 1
            assert s.num_computed_tokens + n == len(s)
        is_prefill = seqs[0] in waiting_before
        if head_fits:
            assert is_prefill, "waiting sequences are prefilled before any decode"
        if is_prefill:
            # FCFS: a prefix of the waiting queue, nothing preempted, nothing decoded
            assert seqs == waiting_before[: len(seqs)]
            assert list(sched.waiting) == waiting_before[len(seqs):]
            assert list(sched.running) == running_before + seqs
            assert sched.num_preemptions == preemptions_before
            for s in seqs:
                assert s.num_computed_tokens % B == 0
                if not w["prefix_caching"]:
                    assert s.num_computed_tokens == 0
        else:
            # decode: the oldest running sequences, one token each; the victims are the newest
            assert seqs == running_before[: len(seqs)]
            assert all(n == 1 for n in plan.num_tokens)
            num_preempted = sched.num_preemptions - preemptions_before
            victims = running_before[len(running_before) - num_preempted:] if num_preempted else []
            assert not set(victims) & set(seqs)
            assert list(sched.waiting) == victims + waiting_before
            assert list(sched.running) == [s for s in running_before if s not in victims]
        check_blocks(sched)

        for s, n in zip(seqs, plan.num_tokens):
            shadow.run(s, n)
        tokens = []
        for s in seqs:
            prompt, samples, expected, _ = info[s.seq_id]
            assert s.token_ids == prompt + samples[: s.num_completion_tokens], "tokens lost"
            assert s.num_completion_tokens < len(expected), "still running after its last token"
            tokens.append(samples[s.num_completion_tokens])
        done = run_step(sched, plan, tokens).finished
        for s in done:
            assert s.is_finished and s.block_table == []
            prompt, _, expected, reason = info[s.seq_id]
            assert s.completion_token_ids == expected and s.token_ids == prompt + expected
            assert s.finish_reason == reason
            finished_ids.append(s.seq_id)
        check_blocks(sched)

    assert sorted(finished_ids) == sorted(info), "a request was lost or finished twice"
    assert kv.num_free_blocks == kv.num_blocks and not kv.used_block_ids
    assert step_no <= total_tokens
