"""Fuzzing the Python API (issue 32), as tests/test_serve_fuzz.py fuzzes the server: hypothesis
draws programs of add_request / step / abort / generate / stream / chat calls with random and
mutated SamplingParams, prompts in every shape (and none), arrival times, priorities and flags, on
one real engine (a tiny random llama with SmolLM2's tokenizer and chat template) for the whole
module. A call may refuse with ValueError (or RuntimeError when generate meets requests added by
hand), nothing else; after every call the engine's live requests are exactly those it accepted
and has not finished; after every program, once idle, every KV block is free and a greedy request
gives the reference tokens. A bounded run in `make test`, a longer one marked slow."""
import math
import time
from numbers import Integral, Real

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvllm import LLM, SamplingParams
from nvllm.engine.intake import CHAT_ROLES, MAX_WAIT

MAX_MODEL_LEN = 32
VOCAB = 49152
REFERENCE_PROMPT = [1, 2, 3, 4, 5]
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
FIELDS = [f for f in SamplingParams.__dataclass_fields__]

# any value at all: the wrong type, out of range, huge, not finite, empty
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**70, 2**70), st.sampled_from([2**63, 2**64, -2**63 - 1, 10**400]),
    st.floats(), st.text(max_size=4), st.lists(st.integers(-2, VOCAB + 2), max_size=3),
    st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))


@st.composite
def good_params(draw) -> SamplingParams:
    max_tokens = draw(st.integers(1, 6))
    return SamplingParams(
        n=draw(st.integers(1, 3)), temperature=draw(st.sampled_from([0.0, 0.7, 1.0, 1e-300, 1e300])),
        top_k=draw(st.sampled_from([0, 1, 5, 2**63 - 1])), top_p=draw(st.sampled_from([1.0, 0.5, 5e-324])),
        min_p=draw(st.sampled_from([0.0, 0.3, 1.0])), repetition_penalty=draw(st.sampled_from([1.0, 1.3, 1e-300, 1e300])),
        presence_penalty=draw(st.sampled_from([0.0, -2.0, 2.0])), frequency_penalty=draw(st.sampled_from([0.0, -2.0, 2.0])),
        max_tokens=max_tokens, min_tokens=draw(st.integers(0, max_tokens)), ignore_eos=draw(st.booleans()),
        seed=draw(st.one_of(st.none(), st.integers(-2**63, 2**64 - 4))),
        stop=draw(st.one_of(st.none(), st.lists(st.text(min_size=1, max_size=2), max_size=2))),
        stop_token_ids=draw(st.one_of(st.none(), st.lists(st.integers(0, VOCAB - 1), max_size=2))),
        logprobs=draw(st.one_of(st.none(), st.integers(0, 3))))


@st.composite
def params(draw):
    """Valid params, changed after construction to any value (a field at a time), or built from
    any keyword arguments (vLLM's and misspelt ones too): the latter may refuse at once."""
    kind = draw(st.sampled_from(["good", "mutated", "built"]))
    if kind == "built":
        kwargs = draw(st.dictionaries(st.sampled_from(FIELDS + ["best_of", "tempature"]), anything, max_size=3))
        try:
            return SamplingParams(**kwargs)
        except ValueError:  # refused at construction: UnsupportedArgumentError is one too
            return draw(good_params())
    sp = draw(good_params())
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 2))):
            field = draw(st.sampled_from(FIELDS))
            value = draw(st.sampled_from([0, -1, 4, 1025, 3_000_000]) if field == "n" else anything)
            setattr(sp, field, value)
    return sp


prompts = st.one_of(
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=10), st.lists(st.integers(-2, VOCAB + 2), max_size=10),
    st.text(max_size=12), st.fixed_dictionaries({"prompt": st.text(max_size=8)}),
    st.fixed_dictionaries({"prompt_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=6)}),
    st.lists(st.integers(0, 9), min_size=MAX_MODEL_LEN, max_size=MAX_MODEL_LEN + 2), anything)
request_ids = st.sampled_from(["a", "b", "c"])


def no_long_wait(value) -> bool:
    """False for a valid arrival time past 0.02 s: generate accepts it (up to a week) and waits for it,
    which a fuzz case cannot; every other value still goes in."""
    return not (isinstance(value, Real) and not isinstance(value, bool) and 0.02 < value <= MAX_WAIT)


ops = st.one_of(
    st.tuples(st.just("add"), request_ids, prompts, params(),
              st.one_of(st.none(), st.floats(0, 0.02), st.sampled_from([math.inf, math.nan, 1e300, "soon", True])),
              st.one_of(st.integers(-3, 3), anything), st.one_of(st.booleans(), anything)),
    st.tuples(st.just("step")),
    st.tuples(st.just("abort"), request_ids),
    st.tuples(st.just("generate"), st.lists(prompts, min_size=1, max_size=3), st.one_of(params(), st.lists(params(), max_size=3)),
              st.one_of(st.none(), st.lists(st.one_of(st.integers(-3, 3), anything), max_size=3)),
              st.one_of(st.none(), st.lists(st.one_of(st.floats(0, 0.02), anything.filter(no_long_wait)), max_size=3))),
    st.tuples(st.just("stream"), st.lists(prompts, min_size=1, max_size=2), params(), st.integers(0, 4)),
    st.tuples(st.just("chat"), st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(CHAT_ROLES + ("robot",)),
        "content": st.one_of(st.text(max_size=8), st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=4)}), max_size=2), anything)}),
        max_size=3), params()))


@pytest.fixture(scope="module")
def fuzz_llm(tiny_text_path):
    with LLM(tiny_text_path, max_model_len=MAX_MODEL_LEN, max_num_seqs=4, max_num_batched_tokens=64,
             kv_cache={"block_size": 8, "num_blocks": 16}) as llm:
        reference = llm.generate(REFERENCE_PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
        assert len(reference) == 4
        yield llm, reference


def refused(call) -> bool:
    """True when `call()` refuses as the API may (ValueError, or generate/stream meeting requests
    added by hand), False when it runs; any other exception fails the case."""
    try:
        call()
    except ValueError:
        return True
    except RuntimeError as e:
        assert "still live on this engine" in str(e), e
        return True
    return False


class Program:
    """One case's calls on the engine, and the requests it accepted and has not seen finish."""

    def __init__(self, llm):
        self.llm, self.engine, self.live = llm, llm.engine, set()

    def run(self, op):
        kind, *args = op
        getattr(self, kind)(*args)
        assert set(self.engine._requests) == self.live, "the engine holds a request it did not accept, or lost one"

    def add(self, request_id, prompt, sp, arrival, priority, stream):
        if isinstance(arrival, float) and 0 <= arrival <= 0.02:
            arrival = self.engine.clock.now() + arrival
        was_live = request_id in self.live
        if not refused(lambda: self.engine.add_request(request_id, prompt, sp, arrival, priority, stream)):
            assert not was_live, "a live request id was accepted again"
            self.live.add(request_id)

    def step(self):
        for delta in self.engine.step():
            if delta.finished:
                self.live.discard(delta.request_id)

    def abort(self, request_id):
        self.engine.abort_request(request_id)
        self.live.discard(request_id)

    def generate(self, prompts, sp, priorities, arrival_times):
        out = []
        if not refused(lambda: out.extend(self.llm.generate(prompts, sp, use_tqdm=False, priorities=priorities,
                                                            arrival_times=arrival_times))):
            # a list that is all integers is one prompt of token ids (vLLM's reading, LLM.generate's)
            expected = 1 if all(isinstance(p, Integral) for p in prompts) else len(prompts)
            assert len(out) == expected and all(o.finished and o.error is None for o in out)

    def stream(self, prompts, sp, take):
        def partly():
            stream = self.llm.stream(prompts, sp)
            for _, _ in zip(range(take), stream):
                pass
            stream.close()  # aborts what is still running
        refused(partly)

    def chat(self, conversation, sp):
        out = []
        if not refused(lambda: out.extend(self.llm.chat(conversation, sp, use_tqdm=False))):
            assert len(out) == (1 if conversation else 0) and all(o.finished for o in out)  # []: no conversation

    def finish(self, reference):
        """Abort what is left, step until idle: every block free, the reference tokens again."""
        for request_id in list(self.live):
            self.abort(request_id)
        for _ in range(1000):
            if not self.engine.has_unfinished_requests():
                break
            self.engine.step()
        assert not self.engine.has_unfinished_requests() and not self.engine._requests
        kv = self.engine.kv_cache
        assert kv.num_free_blocks == kv.num_blocks, f"{kv.num_blocks - kv.num_free_blocks} KV blocks still held"
        assert self.llm.generate(REFERENCE_PROMPT, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == reference


@pytest.mark.parametrize("examples", [200, pytest.param(3000, marks=pytest.mark.slow)])
def test_fuzz_the_python_api(fuzz_llm, examples):
    llm, reference = fuzz_llm
    began = time.monotonic()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(program=st.lists(ops, min_size=1, max_size=6))
    def case(program):
        run = Program(llm)
        try:
            for op in program:
                run.run(op)
        finally:
            run.finish(reference)

    case()
    print(f"{examples} programs in {time.monotonic() - began:.1f} s")
