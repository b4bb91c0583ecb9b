"""A step's fault stays with its request (issue 23): a request whose step raises ends alone with
finish_reason "error" while the others' tokens are exactly what they would have been; every KV
block is freed and the same LLM works afterwards — after Ctrl-C in `generate` or `stream` too. A
second generate/stream on an LLM that is still streaming is refused, naming the fix."""
import signal

import pytest

from nvllm import LLM, SamplingParams
from tests.fault_sampler import FAULT_AT, FAULT_SEED, INTERRUPT_SEED, register_in_process

PROMPTS = [[1, 2, 3], [4, 5, 6, 7], [8, 9] * 5, [10, 11, 12]]
NEIGHBOURS = [SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=5, max_tokens=8, ignore_eos=True),  # a seeded neighbour: exact too
              SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)]


def marked(seed: int) -> SamplingParams:
    return SamplingParams(temperature=0, seed=seed, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_qwen3_path):
    register_in_process()
    with LLM(tiny_qwen3_path, sampler="faulty", max_model_len=64, max_num_batched_tokens=256,
             kv_cache={"block_size": 4, "num_blocks": 40}) as llm:
        yield llm


def assert_idle(llm):
    """Nothing left anywhere: scheduler queues, the request table, KV blocks, per-request sampler state."""
    engine = llm.engine
    assert not engine.has_unfinished_requests() and engine.scheduler.is_finished() and not engine._requests
    assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks
    assert not engine.executor.sampler.generators


def test_a_fault_in_one_request_ends_only_that_request(llm):
    alone = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
    mixed = llm.generate(PROMPTS, NEIGHBOURS + [marked(FAULT_SEED)], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == [o.outputs[0].token_ids for o in alone]
    assert [o.outputs[0].finish_reason for o in mixed[:3]] == ["length"] * 3 and all(o.error is None for o in mixed[:3])
    failed = mixed[3]
    assert failed.outputs[0].finish_reason == "error" and "injected fault for request 3" in failed.error
    assert len(failed.outputs[0].token_ids) == FAULT_AT  # what it generated before the fault is kept
    assert_idle(llm)
    again = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)  # the same LLM goes on
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in alone]


def test_a_fault_in_a_request_of_n_completions_ends_all_of_them_and_only_them(llm):
    """Its completions fail in the same step: the first to fail alone ends the whole request, and
    the others are neither run again nor postprocessed."""
    alone = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
    params = SamplingParams(n=3, temperature=0, seed=FAULT_SEED, max_tokens=8, ignore_eos=True)
    mixed = llm.generate(PROMPTS, NEIGHBOURS + [params], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == [o.outputs[0].token_ids for o in alone]
    failed = mixed[3]
    assert [c.finish_reason for c in failed.outputs] == ["error"] * 3 and "injected fault" in failed.error
    assert all(len(c.token_ids) == FAULT_AT for c in failed.outputs)
    assert_idle(llm)


@pytest.mark.parametrize("n", [1, 3])
def test_under_async_scheduling_a_fault_ends_only_its_request(llm, tiny_qwen3_path, n):
    """With overlap scheduling the step in flight settles first, then each request runs alone: the
    neighbours' tokens (a seeded one's too) are the synchronous engine's, the culprit keeps what it
    generated before the fault, and nothing is left behind."""
    alone = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
    culprit = SamplingParams(n=n, temperature=0, seed=FAULT_SEED, max_tokens=8, ignore_eos=True)
    with LLM(tiny_qwen3_path, sampler="faulty", max_model_len=64, max_num_batched_tokens=256, async_scheduling=True,
             kv_cache={"block_size": 4, "num_blocks": 40}) as overlapped:
        assert overlapped.engine.config.async_scheduling
        mixed = overlapped.generate(PROMPTS, NEIGHBOURS + [culprit], use_tqdm=False)
        assert [o.outputs[0].token_ids for o in mixed[:3]] == [o.outputs[0].token_ids for o in alone]
        assert [o.outputs[0].finish_reason for o in mixed[:3]] == ["length"] * 3
        failed = mixed[3]
        assert [c.finish_reason for c in failed.outputs] == ["error"] * n and "injected fault" in failed.error
        # the first completion raises at FAULT_AT; its siblings, which start once it has computed the
        # prompt (a step later here: its first token arrives a step late), have fewer by then
        assert len(failed.outputs[0].token_ids) == FAULT_AT and all(len(c.token_ids) <= FAULT_AT for c in failed.outputs)
        assert_idle(overlapped)
        again = overlapped.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in alone]


def test_a_fault_ends_its_stream_with_an_error_delta(llm):
    finals, tokens = {}, {}
    for d in llm.stream(PROMPTS, NEIGHBOURS + [marked(FAULT_SEED)]):
        tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
        if d.finished:
            finals[d.request_id] = d
    assert finals["3"].finish_reason == "error" and "injected fault" in finals["3"].error
    assert [finals[i].finish_reason for i in "012"] == ["length"] * 3 and len(tokens["3"]) == FAULT_AT
    assert_idle(llm)


def test_a_value_changed_mid_request_overflows_in_the_real_sampler_and_ends_only_that_request(llm):
    """A bad value inside the engine's own copy of a running request's SamplingParams (a caller's
    change no longer reaches it: intake copies what it checked): the default sampler then overflows
    building its top-k tensor, inside the step."""
    victim = SamplingParams(temperature=0.5, top_k=5, max_tokens=8, ignore_eos=True)
    alone = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
    tokens, finals = {}, {}
    for d in llm.stream(PROMPTS, NEIGHBOURS + [victim]):
        tokens.setdefault(d.request_id, []).extend(d.new_token_ids)
        if d.request_id == "3" and len(tokens["3"]) == 1 and not d.finished:
            llm.engine.sequences("3")[0].sampling_params.top_k = 2**63
        if d.finished:
            finals[d.request_id] = d
    assert finals["3"].finish_reason == "error" and "Overflow" in finals["3"].error
    assert [tokens[i] for i in "012"] == [o.outputs[0].token_ids for o in alone]
    assert_idle(llm)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a test run started in the background (`make test &`)
    inherits SIGINT ignored, and the injected Ctrl-C would then do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("api", ["generate", "stream"])
def test_ctrl_c_leaves_the_llm_usable(llm, api, ctrl_c_raises):
    """KeyboardInterrupt reaches the caller (docs/python-api.md); the call's requests are aborted and
    their blocks freed, so the next call runs as on a fresh LLM."""
    alone = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
    with pytest.raises(KeyboardInterrupt):
        if api == "generate":
            llm.generate(PROMPTS, NEIGHBOURS + [marked(INTERRUPT_SEED)], use_tqdm=False)
        else:
            list(llm.stream(PROMPTS, NEIGHBOURS + [marked(INTERRUPT_SEED)]))
    assert_idle(llm)
    after = llm.generate(PROMPTS[:3], NEIGHBOURS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in after] == [o.outputs[0].token_ids for o in alone]


def test_generate_while_a_stream_is_open_is_refused(llm):
    stream = llm.stream(PROMPTS[:2], NEIGHBOURS[:2])
    first = next(stream)
    with pytest.raises(RuntimeError, match=r"this LLM is busy with a stream\(\) that has not finished.*close\(\)"):
        llm.generate([[1, 2]], NEIGHBOURS[0], use_tqdm=False)
    with pytest.raises(RuntimeError, match="this LLM is busy"):
        next(llm.stream([[1, 2]], NEIGHBOURS[0]))
    rest = list(stream)  # the open stream is unharmed
    assert first.request_id in {"0", "1"} and sum(d.finished for d in [first, *rest]) == 2
    assert_idle(llm)
    stream = llm.stream(PROMPTS[:2], NEIGHBOURS[:2])
    next(stream)
    stream.close()  # closing it aborts its requests and frees the LLM
    assert_idle(llm)
    assert len(llm.generate([[1, 2]], NEIGHBOURS[0], use_tqdm=False)[0].outputs[0].token_ids) == 8


def test_generate_on_an_engine_with_requests_of_its_own_is_refused(llm):
    llm.engine.add_request("mine", [1, 2, 3], NEIGHBOURS[0])
    with pytest.raises(RuntimeError, match="1 request added with add_request is still live"):
        llm.generate([[1, 2]], NEIGHBOURS[0], use_tqdm=False)
    llm.engine.abort_request("mine")
    llm.engine.step()
    assert_idle(llm)
