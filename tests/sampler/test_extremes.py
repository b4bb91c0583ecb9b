"""Issue 32: no sampling parameter at any value SamplingParams accepts collapses the distribution.
Every field is drawn at its extremes, alone and combined, on the sampler directly: the logits after
penalties stay finite wherever the model's were, and the sampled token is always one the model
itself (no penalties, no filters) gives a positive probability, never the token 0 of a NaN row."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvllm.sampler.default import DefaultSampler
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence
from nvllm.testing.sampler import Listed

TINY = [5e-324, 1e-310, 1e-300, 1e-46, 3e-39, 1e-38, 1e-30, 1e-10]
HUGE = [1e10, 1e30, 1e38, 3.5e38, 1e300, 1.7976931348623157e308]
EOS = 1  # the sampler's end-of-sequence id in these tests


def either(default, *extremes, lo: float | None = None, hi: float | None = None):
    """The field's default (off), one of its extreme values, or any value in [lo, hi]."""
    choices = [st.just(default), st.sampled_from(extremes)]
    if lo is not None:
        choices.append(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    return st.one_of(*choices)


@st.composite
def rows(draw):
    """(logits [vocab], the tokens so far, SamplingParams) for one sequence."""
    vocab = draw(st.integers(2, 24))
    logits = draw(st.lists(st.one_of(st.floats(-60, 60), st.just(-math.inf)), min_size=vocab, max_size=vocab))
    if draw(st.booleans()):
        logits[0] = -math.inf  # the token a NaN row's argmax would give
    possible = [t for t, x in enumerate(logits) if x > -math.inf]
    if not possible:
        logits[-1] = draw(st.floats(-60, 60))
        possible = [vocab - 1]
    prompt = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=12))
    generated = draw(st.lists(st.sampled_from(possible), max_size=12))
    stop_token_ids = draw(st.one_of(st.none(), st.lists(st.integers(0, vocab - 1), max_size=4)))
    masked = {EOS} | set(stop_token_ids or ())
    min_tokens = draw(st.sampled_from([0, len(generated) + 1])) if set(possible) - masked else 0
    params = SamplingParams(
        temperature=draw(either(1.0, 0.0, *TINY, *HUGE, lo=0.0, hi=1e6)),
        top_p=draw(either(1.0, *TINY, 0.5, 1.0 - 1e-16, lo=5e-324, hi=1.0)),
        top_k=draw(st.one_of(st.just(0), st.sampled_from([1, 2, vocab - 1, vocab, 2**63 - 1]))),
        min_p=draw(either(0.0, *TINY, 0.5, 1.0 - 1e-16, 1.0, lo=0.0, hi=1.0)),
        repetition_penalty=draw(either(1.0, *TINY, *HUGE, lo=1e-3, hi=1e3)),
        presence_penalty=draw(either(0.0, -2.0, -1e-300, 1e-300, 2.0, lo=-2.0, hi=2.0)),
        frequency_penalty=draw(either(0.0, -2.0, -1e-300, 1e-300, 2.0, lo=-2.0, hi=2.0)),
        seed=draw(st.one_of(st.none(), st.integers(-2**63, 2**64 - 1))),
        min_tokens=min_tokens, max_tokens=max(min_tokens, 1) + 1, stop_token_ids=stop_token_ids)
    seq = Sequence(prompt, params, block_size=16)
    for token in generated:
        seq.append_token(token)
    allowed = set(possible) - (masked if len(generated) < min_tokens else set())
    return logits, seq, allowed


@pytest.mark.parametrize("examples", [200, pytest.param(3000, marks=pytest.mark.slow)])
def test_extreme_sampling_values_never_collapse_the_distribution(examples):
    settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)(
        given(batch=st.lists(rows(), min_size=1, max_size=4), dtype=st.sampled_from([torch.float32, torch.bfloat16]))(
            check_batch))()


def check_batch(batch, dtype):
    vocab = max(len(logits) for logits, _, _ in batch)
    raw = torch.full((len(batch), vocab), -math.inf)
    for b, (logits, _, _) in enumerate(batch):
        raw[b, :len(logits)] = torch.tensor(logits)
    raw = raw.to(dtype)
    sampler = Listed(DefaultSampler(DefaultSampler.Config(), device=torch.device("cpu"), eos_token_ids=frozenset({EOS})))
    seqs = [seq for _, seq, _ in batch]
    processed = sampler.process(raw, seqs).float()
    assert not processed.isnan().any() and not processed.isposinf().any(), processed
    for b, (_, seq, allowed) in enumerate(batch):
        assert processed[b, sorted(allowed)].isfinite().all(), (seq.sampling_params, processed[b])
    for _ in range(2):  # a seeded row's second draw comes from its advanced generator
        tokens = sampler(raw, seqs)
        for token, (_, seq, allowed) in zip(tokens, batch):
            assert token in allowed, (token, sorted(allowed), seq.sampling_params)


@pytest.mark.parametrize("penalty", [1e-300, 3e-39, 5e-324])
@pytest.mark.parametrize("filters", [{}, {"top_p": 0.9}, {"min_p": 0.1}])
def test_a_vanishing_repetition_penalty_gives_the_likeliest_seen_token(penalty, filters):
    """The issue's report: repetition_penalty=1e-300 gave runs of token 0. A penalty that small
    divides every seen token's positive logit towards infinity: the limit is the likeliest of them."""
    logits = torch.tensor([[-5.0, 1.0, 3.0, 0.5, 2.0, -1.0]])
    seen = [3, 4, 5]  # positive logits 0.5 and 2.0: token 4 wins over the unseen token 2 (3.0)
    sampler = Listed(DefaultSampler(DefaultSampler.Config(), device=torch.device("cpu")))
    for seed in range(5):
        s = Sequence(seen, SamplingParams(repetition_penalty=penalty, seed=seed, **filters), block_size=16)
        assert sampler(logits, [s]) == [4]
    greedy = Sequence(seen, SamplingParams(repetition_penalty=penalty, temperature=0), block_size=16)
    assert sampler(logits, [greedy]) == [4]
