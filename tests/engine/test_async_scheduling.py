"""Overlap scheduling (async_scheduling): step N+1 is scheduled and packed while step N runs (on a
CPU, on a worker thread), and N's result is applied one step late. Greedy tokens, texts and finish
reasons are the same with it on and off: for every scheduler, with prefix caching and preemption,
with stop tokens, stop strings and aborts, seeded sampling, and against transformers. A request
that ends while the next step is in flight loses that step's token, and its blocks at once."""
import random

import pytest

from nvllm import LLM, SamplingParams
from nvllm.config import ConfigError
from nvllm.sequence import Sequence
from nvllm.step import StepResult
from tests.conftest import hf_greedy

BASE = dict(max_model_len=128, max_num_batched_tokens=256)


def prompts_with_shared_prefixes(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(512) for _ in range(20)]
    prompts = [shared + [rng.randrange(512) for _ in range(n)] for n in (1, 9, 30)]
    return prompts + [prompts[1], [rng.randrange(512) for _ in range(3)], shared[:16]]


def run(path, prompts, params, async_scheduling, priorities=None, **overrides):
    """Outputs, and what the engine went through: preemptions, prefix hits, blocks left over."""
    with LLM(path, async_scheduling=async_scheduling, **{**BASE, **overrides}) as llm:
        engine = llm.engine
        assert engine.config.async_scheduling is async_scheduling
        assert (engine.executor.worker is not None) == async_scheduling  # on a CPU: the forward thread
        outs = llm.generate(prompts, params, use_tqdm=False, priorities=priorities)
        assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks and engine._in_flight is None
        return outs, engine.scheduler.num_preemptions, engine.kv_cache.hit_rate


@pytest.mark.parametrize("scheduler", ["fcfs", {"name": "chunked", "max_chunk": 8}, "priority"],
                         ids=["fcfs", "chunked", "priority"])
def test_greedy_tokens_same_on_and_off_with_preemption_and_prefix_hits(tiny_qwen3_path, scheduler):
    prompts = prompts_with_shared_prefixes()
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    kv = {"block_size": 8, "num_blocks": 12, "prefix_caching": True}
    extra = dict(priorities=[2, 0, 1, 2, 0, 1]) if scheduler == "priority" else {}
    off, pre_off, hits_off = run(tiny_qwen3_path, prompts, greedy, False, scheduler=scheduler, kv_cache=kv, **extra)
    on, pre_on, hits_on = run(tiny_qwen3_path, prompts, greedy, True, scheduler=scheduler, kv_cache=kv, **extra)
    assert pre_off > 0 and pre_on > 0, "the small cache forced no preemption"
    assert hits_off > 0 and hits_on > 0
    tokens = [o.outputs[0].token_ids for o in on]
    assert tokens == [o.outputs[0].token_ids for o in off] == hf_greedy(tiny_qwen3_path, prompts, 12)
    assert [o.outputs[0].finish_reason for o in on] == ["length"] * len(prompts)
    for o in on:  # a timestamp per token, in order, after the request was first scheduled
        times = o.outputs[0].token_times
        assert len(times) == 12 and times == sorted(times)
        assert o.metrics.first_scheduled_time <= times[0]


def test_a_stop_token_seen_a_step_late_drops_the_lookahead_token(tiny_qwen3_path):
    """Each request stops on a token of its own greedy stream: with overlap, the step after the one
    that sampled it is already running with the request in it; that step's token is dropped, the
    request's blocks are freed when the stop is seen, and the outputs equal those without overlap."""
    prompts = prompts_with_shared_prefixes(1)[:4]
    full = run(tiny_qwen3_path, prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), False)[0]
    params = [SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[o.outputs[0].token_ids[2 + i]])
              for i, o in enumerate(full)]
    off = [o.outputs[0] for o in run(tiny_qwen3_path, prompts, params, False)[0]]
    with LLM(tiny_qwen3_path, async_scheduling=True, **BASE) as llm:
        engine, outputs, dropped = llm.engine, {}, 0
        for i, (p, sp) in enumerate(zip(prompts, params)):
            engine.add_request(str(i), p, sp)
        while engine.has_unfinished_requests():
            for d in engine.step():
                outputs.setdefault(d.request_id, []).extend(d.new_token_ids)
                if d.finished:
                    assert d.finish_reason == "stop"
                    seq = next((s for s in engine._in_flight.plan.seqs if s.request_id == d.request_id), None)
                    if seq is not None:  # in the step launched meanwhile: its token there is dropped
                        assert seq.num_tokens == len(seq.token_ids) and not seq.block_table
                        dropped += 1
        assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    assert dropped > 0, "no stop was seen while the next step was in flight"
    assert [outputs[str(i)] for i in range(len(prompts))] == [o.token_ids for o in off]
    assert all(o.finish_reason == "stop" and len(o.token_ids) < 12 for o in off)


def test_length_limits_end_a_request_at_launch_without_a_lookahead_step(tiny_qwen3_path):
    """max_tokens and max_model_len are known before the token arrives: the request is finished
    when the step that samples its last token is launched, and no later step runs it."""
    prompts, limits = [[1, 2, 3] * 4, [4, 5], [6] * 7], [30, 3, 5]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in limits]
    kw = dict(kv_cache={"block_size": 8, "num_blocks": 8}, max_model_len=20, max_num_batched_tokens=64)
    off = [o.outputs[0] for o in run(tiny_qwen3_path, prompts, params, False, **kw)[0]]
    with LLM(tiny_qwen3_path, async_scheduling=True, **kw) as llm:
        engine, tokens, reasons = llm.engine, {}, {}
        for i, (p, sp) in enumerate(zip(prompts, params)):
            engine.add_request(str(i), p, sp)
        while engine.has_unfinished_requests():
            for d in engine.step():
                tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
                if d.finished:
                    reasons[d.request_id] = d.finish_reason
                    in_flight = engine._in_flight.plan.seqs if engine._in_flight else []
                    assert all(s.request_id != d.request_id for s in in_flight), "a step ran past the limit"
    assert [(o.finish_reason, len(o.token_ids)) for o in off] == [("max_model_len", 8), ("length", 3), ("length", 5)]
    assert [tokens[str(i)] for i in range(3)] == [o.token_ids for o in off]
    assert [reasons[str(i)] for i in range(3)] == [o.finish_reason for o in off]


def test_an_abort_while_its_step_is_in_flight_drops_that_token_and_frees_its_blocks(tiny_qwen3_path):
    prompts = prompts_with_shared_prefixes(2)[:3]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in run(tiny_qwen3_path, prompts, params, False)[0]]
    with LLM(tiny_qwen3_path, async_scheduling=True, kv_cache={"block_size": 8}, **BASE) as llm:
        engine, tokens = llm.engine, {}
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        for _ in range(5):
            for d in engine.step():
                tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
        seq = engine._requests["1"][0].seq
        # its next token is being computed: counted, not yet among its tokens
        assert seq.num_tokens == len(seq.token_ids) + 1 and seq in engine._in_flight.plan.seqs
        free, held = engine.kv_cache.num_free_blocks, len(seq.block_table)
        engine.abort_request("1")
        assert engine.kv_cache.num_free_blocks == free + held  # at once, with the step still in flight
        finished = {}
        while engine.has_unfinished_requests():
            for d in engine.step():
                assert all(type(t) is int and t >= 0 for t in d.new_token_ids)
                tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
                if d.finished:
                    finished[d.request_id] = d
        assert finished["1"].finish_reason == "abort" and finished["1"].num_output_tokens == len(tokens["1"])
        assert tokens["1"] == want[1][:len(tokens["1"])] and seq.completion_token_ids == tokens["1"]
        assert [tokens["0"], tokens["2"]] == [want[0], want[2]]
        assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> str:
    """A tiny random llama with the SmolLM2 tokenizer (its greedy text: arbitrary pieces of the vocabulary)."""
    from nvllm.models.weights import smollm2_path
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("tiny-llama-text")), preset="tiny",
                                  vocab_size=49152, tokenizer_from=str(smollm2_path()), seed=3)


def test_stop_strings_and_streams_are_the_same_on_and_off(text_model):
    prompts = ["Once upon a time", "The capital of France is", "🍣 sushi and 🍜 ramen:"]
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    full = [o.outputs[0] for o in run(text_model, prompts, greedy, False)[0]]
    stops = [o.text[len(o.text) // 2:len(o.text) // 2 + 2] for o in full]  # two characters from the middle
    params = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=[s]) for s in stops]

    def stream(async_scheduling):
        with LLM(text_model, async_scheduling=async_scheduling, **BASE) as llm:
            texts, tokens, reasons = {}, {}, {}
            for d in llm.stream(prompts, params):
                texts[d.request_id] = texts.get(d.request_id, "") + d.new_text
                tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
                if d.finished:
                    reasons[d.request_id] = d.finish_reason
            assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks
            return texts, tokens, reasons

    off, on = stream(False), stream(True)
    assert on == off
    assert [off[0][str(i)] for i in range(3)] == [o.text[:o.text.index(s)] for o, s in zip(full, stops)]
    assert set(off[2].values()) == {"stop"}


def test_seeded_sampling_is_the_same_on_and_off(tiny_qwen3_path):
    prompts = prompts_with_shared_prefixes(3)
    params = [SamplingParams(temperature=0.8, top_k=50, seed=i, max_tokens=10) for i in range(len(prompts))]
    off = run(tiny_qwen3_path, prompts, params, False)[0]
    on = run(tiny_qwen3_path, prompts, params, True)[0]
    assert [o.outputs[0].token_ids for o in on] == [o.outputs[0].token_ids for o in off]


def test_n_logprobs_penalties_and_min_tokens_are_the_same_on_and_off(tiny_qwen3_path):
    """The sampler reads each request's history (penalties, min_tokens) and logprobs are taken once
    the tokens reach the host: with overlap the sampler still sees every earlier token, and n
    completions sharing a cached prompt come out as they do without it."""
    prompts = prompts_with_shared_prefixes(6)[:4]
    params = [SamplingParams(temperature=0, max_tokens=10, repetition_penalty=1.3, logprobs=2),
              SamplingParams(temperature=0, max_tokens=10, frequency_penalty=0.5, presence_penalty=0.3, min_tokens=6),
              SamplingParams(temperature=0.9, seed=3, n=3, max_tokens=8, min_p=0.05),
              SamplingParams(temperature=0, max_tokens=8, n=2, logprobs=0)]
    kv = {"block_size": 8, "prefix_caching": True}
    off = run(tiny_qwen3_path, prompts, params, False, kv_cache=kv)[0]
    on = run(tiny_qwen3_path, prompts, params, True, kv_cache=kv)[0]
    assert [[c.token_ids for c in o.outputs] for o in on] == [[c.token_ids for c in o.outputs] for o in off]
    assert [len(o.outputs) for o in on] == [1, 1, 3, 2]
    for a, b in zip(on, off):
        for x, y in zip(a.outputs, b.outputs):
            assert (x.text, x.finish_reason) == (y.text, y.finish_reason)
            assert (x.logprobs is None) == (y.logprobs is None)
            if x.logprobs is not None:
                assert len(x.logprobs) == len(x.token_ids)
                assert [sorted(e) for e in x.logprobs] == [sorted(e) for e in y.logprobs]
                assert x.cumulative_logprob == pytest.approx(y.cumulative_logprob, abs=1e-5)


def test_a_length_finish_at_launch_becomes_a_stop_when_the_token_is_eos():
    """commit (at launch) finishes a request that reaches max_tokens with its token still coming;
    when the token arrives (update) and is EOS, the reason is "stop", as if both were known at once."""
    from nvllm import registry
    from nvllm.plugins import load_plugins

    load_plugins()
    kv = registry.build("kv_cache", "paged", num_blocks=4, block_size=4)
    sched = registry.build("scheduler", "fcfs", kv_cache=kv, max_num_seqs=4, max_num_batched_tokens=64,
                           max_model_len=64, eos_token_ids=frozenset({7}))
    seqs = [Sequence([1, 2, 3], SamplingParams(max_tokens=1), 4) for _ in range(2)]
    for seq in seqs:
        sched.add(seq)
    plan = sched.schedule()
    assert plan.seqs == seqs
    sched.commit(plan)  # both reach max_tokens: finished, blocks freed, their token still coming
    assert all(s.is_finished and s.num_tokens == len(s.token_ids) + 1 and not s.block_table for s in seqs)
    assert kv.num_free_blocks == 4
    update = sched.update(plan, StepResult([7, 8]), 1.0)  # the tokens arrive: the last ones of both
    assert update.finished == seqs and update.num_new == [1, 1]
    assert [(s.finish_reason, s.completion_token_ids) for s in seqs] == [("stop", [7]), ("length", [8])]


def test_auto_is_off_on_a_cpu_and_a_bad_value_is_refused(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, **BASE) as llm:
        assert llm.engine.config.async_scheduling is False and llm.engine.executor.worker is None
    with pytest.raises(ConfigError, match="async_scheduling='sometimes' is not allowed: use auto, true or false"):
        LLM(tiny_qwen3_path, async_scheduling="sometimes")


@pytest.mark.slow
def test_tp2_with_overlap_matches_tp1(tiny_qwen3_path):
    prompts = prompts_with_shared_prefixes(4)
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    kv = {"block_size": 8, "num_blocks": 16}
    off = run(tiny_qwen3_path, prompts, greedy, False, kv_cache=kv)
    on = run(tiny_qwen3_path, prompts, greedy, True, kv_cache=kv, tp=2)
    assert on[1] > 0  # preempted sequences were re-prefilled on both ranks
    assert [o.outputs[0].token_ids for o in on[0]] == [o.outputs[0].token_ids for o in off[0]]


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_overlap_on_cuda_keeps_the_greedy_tokens(tiny_qwen3_path, attention):
    """On CUDA, where auto turns it on: decode CUDA graphs, PENDING inputs filled in on the device,
    tokens copied to pinned memory; float32, so the tokens must agree exactly with it off."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    prompts = prompts_with_shared_prefixes(5)
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    kw = dict(device="cuda", dtype="float32", attention=attention, kv_cache={"block_size": 16, "num_blocks": 24},
              max_model_len=256, max_num_batched_tokens=512, max_num_seqs=16)
    with LLM(tiny_qwen3_path, **kw) as llm:
        assert llm.engine.config.async_scheduling is True  # auto, on CUDA
        on = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    with LLM(tiny_qwen3_path, async_scheduling=False, **kw) as llm:
        off = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    assert on == off
