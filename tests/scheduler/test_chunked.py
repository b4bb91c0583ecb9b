"""ChunkedScheduler: chunked prefill mixed with decode under a token budget.

Driven without a model (as tests/scheduler/test_fcfs.py does) for its policy and its invariants
under random workloads, and through the engine against Hugging Face greedy tokens (as
tests/test_parity.py does), with prefix caching on and off and under preemption. The parity
helpers here are shared with test_priority.py."""
import functools

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nvllm import LLM, SamplingParams
from nvllm.config import ConfigError
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.kv_cache.paged import PagedBlockManager
from nvllm.scheduler.chunked import ChunkedScheduler
from nvllm.testing import SchedulerSuite, hf_greedy
from nvllm.testing.scheduler import run_step
from tests.scheduler.test_fcfs import EOS, KVShadow, check_blocks, expected_completion, workloads
from tests.test_parity import CHAT, RAW


def make_scheduler(num_blocks, block_size, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64,
                   prefix_caching=False, **config) -> ChunkedScheduler:
    kv = PagedBlockManager(PagedBlockManager.Config(block_size=block_size, prefix_caching=prefix_caching),
                           num_blocks=num_blocks, block_size=block_size)
    return ChunkedScheduler(ChunkedScheduler.Config(**config), kv_cache=kv, max_num_seqs=max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                            eos_token_ids=frozenset({EOS}))


def add(sched, prompt, max_tokens, priority=0) -> Sequence:
    seq = Sequence(list(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True), sched.kv_cache.block_size,
                   priority)
    sched.add(seq)
    return seq


def step(sched):
    plan = sched.schedule()
    n = dict(zip((s.seq_id for s in plan.seqs), plan.num_tokens))
    return plan.seqs, n, run_step(sched, plan, [1] * len(plan.seqs)).finished


class TestChunkedConformance(SchedulerSuite):
    name = "chunked"
    configs = [{}, {"max_chunk": 5}]


# -- policy --------------------------------------------------------------------------------------

def test_long_prompt_is_split_by_the_budget_and_decodes_ride_along():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_batched_tokens=8)
    a = add(sched, [1, 2, 3], max_tokens=4)
    seqs, n, _ = step(sched)
    assert seqs == [a] and n == {a.seq_id: 3}
    b = add(sched, list(range(10, 30)), max_tokens=2)  # 20 tokens: three chunks of at most 7
    seqs, n, _ = step(sched)
    assert seqs == [a, b] and n == {a.seq_id: 1, b.seq_id: 7}, "a decode and a prefill chunk share the step"
    assert b.num_computed_tokens == 7 and b.num_completion_tokens == 0, "a chunk's sampled token is dropped"
    seqs, n, _ = step(sched)
    assert n == {a.seq_id: 1, b.seq_id: 7}
    seqs, n, _ = step(sched)
    assert n == {a.seq_id: 1, b.seq_id: 6} and b.num_completion_tokens == 1
    assert a.is_finished and a.completion_token_ids == [1, 1, 1, 1]


def test_decodes_come_before_prefill_chunks_and_new_requests():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_batched_tokens=4, max_num_seqs=4)
    old = [add(sched, [i], max_tokens=5) for i in range(3)]
    step(sched)  # three one-token prefills
    new = add(sched, list(range(10)), max_tokens=1)
    seqs, n, _ = step(sched)
    assert seqs == old + [new] and [n[s.seq_id] for s in seqs] == [1, 1, 1, 1]


def test_max_chunk_caps_each_prefill():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_batched_tokens=20, max_chunk=3)
    a, b = add(sched, list(range(7)), max_tokens=2), add(sched, list(range(5)), max_tokens=2)
    seqs, n, _ = step(sched)
    assert n == {a.seq_id: 3, b.seq_id: 3}


def test_max_num_seqs_bounds_running_requests():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_seqs=2)
    seqs_in = [add(sched, [i, i], max_tokens=3) for i in range(3)]
    seqs, _, _ = step(sched)
    assert seqs == seqs_in[:2] and list(sched.waiting) == seqs_in[2:]


def test_newest_is_preempted_and_recomputed_in_chunks():
    # a budget of 2 < a recompute of 3 tokens: the engine allows that only for a chunked scheduler
    sched = make_scheduler(num_blocks=3, block_size=2, max_num_batched_tokens=2, max_model_len=8)
    a = add(sched, [5, 6], max_tokens=4)
    b = add(sched, [7], max_tokens=3)
    _, n, _ = step(sched)
    assert n == {a.seq_id: 2}, "a's prompt takes the whole budget"
    _, n, _ = step(sched)
    assert n == {a.seq_id: 1, b.seq_id: 1}, "a decodes, b prefills"
    step(sched)
    plan = sched.schedule()  # a needs a third block: b, the newest, is preempted
    assert plan.seqs == [a] and sched.num_preemptions == 1 and list(sched.waiting) == [b]
    run_step(sched, plan, [1])
    assert a.is_finished and b.token_ids == [7, 1, 1]
    _, n, _ = step(sched)
    assert n == {b.seq_id: 2} and b.num_completion_tokens == 2, "the recompute's first chunk"
    _, n, _ = step(sched)
    assert n == {b.seq_id: 1} and b.is_finished and b.completion_token_ids == [1, 1, 1]
    assert sched.kv_cache.num_free_blocks == 3


def test_engine_refuses_a_budget_below_max_model_len_for_fcfs_only(tiny_qwen3_path):
    with pytest.raises(ConfigError, match="scheduler=chunked"):
        LLM(tiny_qwen3_path, max_model_len=64, max_num_batched_tokens=16)
    with LLM(tiny_qwen3_path, scheduler="chunked", max_model_len=64, max_num_batched_tokens=16,
             kv_cache={"block_size": 8, "num_blocks": 16}) as llm:
        out = llm.generate([list(range(1, 40))], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 3


# -- random workloads ----------------------------------------------------------------------------

def drive(sched, w, priorities=None, check=lambda sched, plan, before: None):
    """Run workload `w` (from test_fcfs's `workloads` strategy) through `sched` with made-up sampled
    tokens, checking the shared invariants each step and `check(sched, plan, before)` after each
    schedule(). Returns the number of steps."""
    kv, shadow = sched.kv_cache, KVShadow(sched.kv_cache)
    pending = sorted(enumerate(w["requests"]), key=lambda r: r[1][4])
    info, finished_ids = {}, []
    # every step computes a token; preemption recomputes at most everything once per request
    step_limit = sum(len(p) + m for p, m, *_ in w["requests"]) * (len(w["requests"]) + 1)
    step_no = 0
    while pending or not sched.is_finished():
        assert step_no <= step_limit, "the scheduler stopped making progress"
        while pending and (pending[0][1][4] <= step_no or sched.is_finished()):
            i, (prompt, max_tokens, ignore_eos, samples, _) = pending.pop(0)
            seq = Sequence(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos), kv.block_size,
                           priorities[i] if priorities else 0)
            sched.add(seq)
            info[seq.seq_id] = (prompt, samples, *expected_completion(max_tokens, ignore_eos, samples))
        step_no += 1
        before = dict(waiting=list(sched.waiting), running=list(sched.running), preemptions=sched.num_preemptions)
        plan = sched.schedule()
        seqs = plan.seqs
        assert seqs, "the scheduler picked nothing while requests are pending"
        assert len(seqs) <= w["max_num_seqs"]
        assert len({s.seq_id for s in seqs}) == len(seqs)
        assert sum(plan.num_tokens) <= w["max_num_batched_tokens"]
        for s, n in zip(seqs, plan.num_tokens, strict=True):
            assert s.status == SequenceStatus.RUNNING and s in sched.running
            assert 1 <= n <= len(s) - s.num_computed_tokens
        check(sched, plan, before)
        check_blocks(sched)
        for s, n in zip(seqs, plan.num_tokens):
            shadow.run(s, n)
        tokens = []
        for s in seqs:
            prompt, samples, expected, _ = info[s.seq_id]
            assert s.token_ids == prompt + samples[: s.num_completion_tokens], "tokens lost"
            tokens.append(samples[s.num_completion_tokens])
        for s in run_step(sched, plan, tokens).finished:
            prompt, _, expected, reason = info[s.seq_id]
            assert s.is_finished and s.block_table == [] and s.completion_token_ids == expected
            assert s.finish_reason == reason
            finished_ids.append(s.seq_id)
        check_blocks(sched)
    assert sorted(finished_ids) == sorted(info), "a request was lost or finished twice"
    assert kv.num_free_blocks == kv.num_blocks and not kv.used_block_ids
    return step_no


@st.composite
def chunked_workloads(draw):
    """test_fcfs's workloads with any token budget (also below max_model_len) and chunk cap."""
    w = draw(workloads())
    w["max_num_batched_tokens"] = draw(st.integers(1, w["max_model_len"] + 4))
    w["max_num_seqs"] = draw(st.integers(1, 6))
    w["max_chunk"] = draw(st.sampled_from([0, 0, 1, 3]))
    return w


def check_chunked(sched, plan, before):
    """Decodes first, and work-conserving: a step leaves budget and seats unused only when every
    running sequence is in it and the head of the queue does not fit the cache."""
    seqs = plan.seqs
    assert len(sched.running) <= sched.max_num_seqs, "more requests running than max_num_seqs"
    decoding = [s for s in before["running"] if s in sched.running and len(s) - s.num_computed_tokens == 1]
    if any(s not in seqs for s in decoding):  # a decode waited: the step was full, and only of decodes
        assert plan.total_tokens == sched.max_num_batched_tokens or \
            len(seqs) == sched.max_num_seqs, "a decode was left out of a step with room"
        assert all(len(s) - s.num_computed_tokens == 1 for s in seqs), "a prefill chunk went before a decode"
    budget_left = sched.max_num_batched_tokens - plan.total_tokens
    if budget_left and len(seqs) < sched.max_num_seqs:
        assert all(s in seqs for s in sched.running), "a running sequence idled in a step with room"
        if sched.waiting and len(sched.running) < sched.max_num_seqs:
            assert not sched.kv_cache.can_allocate(sched.waiting[0]), "the queue head fit but was not admitted"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[p for p in Phase if p != Phase.explain])
@given(chunked_workloads())
def test_random_workloads_run_to_completion(w):
    sched = make_scheduler(num_blocks=w["num_blocks"], block_size=w["block_size"], max_num_seqs=w["max_num_seqs"],
                           max_num_batched_tokens=w["max_num_batched_tokens"], max_model_len=w["max_model_len"],
                           prefix_caching=w["prefix_caching"], max_chunk=w["max_chunk"])
    drive(sched, w, check=check_chunked)


# -- parity with Hugging Face --------------------------------------------------------------------

MAX_NEW = 20
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
BASE = dict(max_model_len=512, max_num_batched_tokens=2048)


@pytest.fixture(scope="module")
def cases(smollm2_path, tiny_qwen3_path):
    """name -> (model directory, prompts): a few of test_parity's prompts, short and long."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    chat = tok.apply_chat_template([{"role": "user", "content": CHAT[1]}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False)
    rng = random.Random(0)
    return {
        "smollm2": (smollm2_path, [chat, tok.encode(RAW[0]), tok.encode(RAW[3])]),
        "qwen3-tiny": (tiny_qwen3_path, [[rng.randrange(512) for _ in range(n)] for n in (1, 17, 33, 100, 150)]),
    }


@functools.cache
def _reference(path: str, prompts: tuple[tuple[int, ...], ...]) -> list[list[int]]:
    return hf_greedy(path, [list(p) for p in prompts], MAX_NEW)


def reference(path: str, prompts: list[list[int]]) -> list[list[int]]:
    """Hugging Face greedy tokens, computed once per session for each prompt set."""
    return _reference(path, tuple(tuple(p) for p in prompts))


def generate(path, prompts, priorities=None, late=(), **overrides):
    """Greedy tokens for `prompts` through the engine, and a record of every step: one
    (num_computed_tokens, tokens it runs this step, len, num_prompt_tokens, priority) per sequence
    in the step's plan. Prompts whose index is in `late` arrive after three steps."""
    with LLM(path, **{**BASE, **overrides}) as llm:
        engine, steps = llm.engine, []
        schedule = engine.scheduler.schedule

        def recorded(lookahead=0):
            plan = schedule(lookahead)
            steps.append([(s.num_computed_tokens, n, len(s), s.num_prompt_tokens, s.priority)
                          for s, n in zip(plan.seqs, plan.num_tokens)])
            return plan

        engine.scheduler.schedule = recorded
        priorities = priorities or [0] * len(prompts)
        seqs = {i: engine.add_request(str(i), p, GREEDY, priority=priorities[i]) for i, p in enumerate(prompts) if i not in late}
        for _ in range(3):
            engine.step()
        seqs |= {i: engine.add_request(str(i), prompts[i], GREEDY, priority=priorities[i]) for i in late}
        while engine.has_unfinished_requests():
            engine.step()
        tokens = [seqs[i].completion_token_ids for i in range(len(prompts))]
        return tokens, steps, engine.scheduler.num_preemptions


def assert_same(got, want):
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == MAX_NEW
        assert g == w, f"prompt {i}: first difference at token {next(j for j in range(len(w)) if g[j] != w[j])}"


def is_mixed(step) -> bool:
    """A step that runs a decode and part of a prompt together."""
    decode = any(computed >= prompt_len for computed, _, _, prompt_len, _ in step)
    chunk = any(computed + n < length for computed, n, length, _, _ in step)
    return decode and chunk


MODELS = ["qwen3-tiny", pytest.param("smollm2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_parity_with_chunks_mixed_into_decode(cases, prefix_caching):
    path, prompts = cases["qwen3-tiny"]
    # the longest prompts arrive late, while the short ones decode: their chunks share steps
    late = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))[-2:]
    got, steps, _ = generate(path, prompts, late=late, scheduler="chunked", max_num_batched_tokens=32,
                             kv_cache={"prefix_caching": prefix_caching, "block_size": 16})
    assert any(is_mixed(s) for s in steps), "no step mixed a decode with a prefill chunk"
    assert all(sum(n for _, n, *_ in s) <= 32 for s in steps)
    assert_same(got, reference(path, prompts))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_parity_under_preemption(cases, model, prefix_caching):
    path, prompts = cases[model]
    shared = prompts + [prompts[-1][:40] + prompts[0]]  # a prefix hit, when caching is on
    # room for every prompt (and the longest request alone), not for every prompt to grow
    num_blocks = max(sum(-(-len(p) // 16) for p in shared), -(-(max(len(p) for p in shared) + MAX_NEW) // 16))
    got, steps, preemptions = generate(path, shared, scheduler="chunked", max_num_batched_tokens=48,
                                       kv_cache={"block_size": 16, "num_blocks": num_blocks,
                                                 "prefix_caching": prefix_caching})
    assert preemptions > 0
    assert any(is_mixed(s) for s in steps)
    assert_same(got, reference(path, shared))


def test_seeded_sampling_does_not_depend_on_chunking(tiny_qwen3_path):
    sp = SamplingParams(temperature=1.0, seed=5, max_tokens=8, ignore_eos=True)
    tokens = []
    for budget in (512, 32):  # the 99-token prompt in one step, then in four chunks
        with LLM(tiny_qwen3_path, scheduler="chunked", max_model_len=256, max_num_batched_tokens=budget,
                 kv_cache={"block_size": 16, "num_blocks": 64}) as llm:
            tokens.append(llm.generate([list(range(1, 100))], sp, use_tqdm=False)[0].outputs[0].token_ids)
    assert tokens[0] == tokens[1]
