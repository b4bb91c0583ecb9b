"""DefaultSampler: greedy, temperature, top-k, top-p, per-request seeds; SamplingParams validation."""
import pytest
import torch

from nvllm.sampler.default import DefaultSampler
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence
from nvllm.testing.sampler import Listed

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed_global_rng():
    torch.manual_seed(1234)


def make_sampler(**kwargs) -> DefaultSampler:
    return Listed(DefaultSampler(DefaultSampler.Config(), device=CPU, **kwargs))


def seq(**params) -> Sequence:
    return Sequence([1, 2, 3], SamplingParams(**params), block_size=16)


def empirical(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).double() / len(tokens)


def top_p_set(probs: torch.Tensor, p: float) -> set[int]:
    """Smallest set of most likely tokens whose total probability reaches p (computed in float64)."""
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += float(probs[i])
        if mass >= p:
            break
    return kept


# --- greedy ---------------------------------------------------------------------------------


def test_temperature_zero_is_argmax():
    sampler = make_sampler()
    logits = torch.randn(16, 1000)
    seqs = [seq(temperature=0) for _ in range(16)]
    for _ in range(3):
        assert sampler(logits, seqs) == logits.argmax(dim=-1).tolist()


def test_temperature_zero_takes_the_first_of_tied_maxima():
    """A greedy batch on a CPU is argmax'd through numpy: ties, inf and NaN go as torch's argmax."""
    logits = torch.zeros(4, 300)
    logits[0, [7, 250]] = 3.0
    logits[1, [5, 9]] = float("inf")
    logits[2, [11, 40]] = float("nan")
    logits[3, 0] = float("-inf")
    assert make_sampler()(logits, [seq(temperature=0) for _ in range(4)]) == logits.argmax(dim=-1).tolist() == [7, 5, 11, 1]


def test_temperature_zero_ignores_seed_top_k_top_p():
    sampler = make_sampler()
    logits = torch.randn(4, 500)
    seqs = [seq(temperature=0, seed=7), seq(temperature=0, top_k=5), seq(temperature=0, top_p=0.3), seq(temperature=0)]
    assert sampler(logits, seqs) == logits.argmax(dim=-1).tolist()


def test_mixed_greedy_and_sampled_rows():
    sampler = make_sampler()
    vocab = 50
    # flat logits: the sampled rows have many plausible tokens, so they must not be pinned to argmax
    logits = torch.randn(8, vocab) * 0.1
    greedy_rows = [0, 3, 5, 6]
    seqs = [seq(temperature=0) if b in greedy_rows else seq(temperature=1.5) for b in range(8)]
    argmax = logits.argmax(dim=-1).tolist()
    sampled = {b: set() for b in range(8) if b not in greedy_rows}
    for _ in range(30):
        out = sampler(logits, seqs)
        assert len(out) == 8
        for b in range(8):
            if b in greedy_rows:
                assert out[b] == argmax[b]
            else:
                assert 0 <= out[b] < vocab
                sampled[b].add(out[b])
    # the sampled rows really are sampled
    assert all(len(tokens) > 5 for tokens in sampled.values())


def test_mixed_greedy_and_seeded_rows_greedy_still_argmax():
    sampler = make_sampler()
    logits = torch.randn(4, 200)
    seqs = [seq(temperature=0), seq(temperature=1.0, seed=3), seq(temperature=0, seed=3), seq(temperature=2.0, top_k=10)]
    argmax = logits.argmax(dim=-1).tolist()
    for _ in range(10):
        out = sampler(logits, seqs)
        assert out[0] == argmax[0] and out[2] == argmax[2]


# --- top-k / top-p --------------------------------------------------------------------------


def test_top_k_one_is_argmax_even_at_high_temperature():
    sampler = make_sampler()
    logits = torch.randn(32, 300)
    seqs = [seq(temperature=100.0, top_k=1) for _ in range(32)]
    for _ in range(5):
        assert sampler(logits, seqs) == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("k", [2, 5, 20])
def test_top_k_only_yields_k_largest(k):
    sampler = make_sampler()
    vocab, rows = 100, 200
    base = torch.randn(vocab)
    logits = base.expand(rows, vocab).contiguous()
    allowed = set(base.topk(k).indices.tolist())
    # high temperature flattens the distribution, so anything outside top-k would show up
    seqs = [seq(temperature=5.0, top_k=k) for _ in range(rows)]
    seen = set()
    for _ in range(10):
        out = sampler(logits, seqs)
        assert set(out) <= allowed
        seen.update(out)
    assert seen == allowed  # every top-k token is reachable


def test_top_k_per_row_in_mixed_batch():
    sampler = make_sampler()
    vocab, reps = 60, 100
    logits = torch.randn(3, vocab)
    allowed0 = set(logits[0].topk(3).indices.tolist())
    allowed2 = set(logits[2].topk(10).indices.tolist())
    # rows interleaved: top_k=3, unfiltered, top_k=10, top_k=3, unfiltered, ...
    seqs = [s for _ in range(reps) for s in (seq(temperature=3.0, top_k=3), seq(temperature=3.0), seq(temperature=3.0, top_k=10))]
    out = sampler(logits.repeat(reps, 1), seqs)
    assert set(out[0::3]) <= allowed0
    assert set(out[2::3]) <= allowed2
    # the unfiltered rows are not restricted by their neighbours' top_k
    assert len(set(out[1::3])) > 10


def test_top_p_tiny_is_argmax():
    sampler = make_sampler()
    logits = torch.randn(32, 400)
    seqs = [seq(temperature=2.0, top_p=1e-6) for _ in range(32)]
    for _ in range(5):
        assert sampler(logits, seqs) == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_p_half_only_yields_nucleus(temperature):
    sampler = make_sampler()
    vocab, rows = 40, 500
    base = torch.randn(vocab) * 0.8
    # top_p applies to the temperature-scaled distribution
    nucleus = top_p_set((base.double() / temperature).softmax(-1), 0.5)
    assert 1 < len(nucleus) < vocab  # the test is meaningful
    logits = base.expand(rows, vocab).contiguous()
    seqs = [seq(temperature=temperature, top_p=0.5) for _ in range(rows)]
    seen = set()
    for _ in range(10):
        out = sampler(logits, seqs)
        assert set(out) <= nucleus
        seen.update(out)
    assert seen == nucleus


def test_top_p_nucleus_boundary_token_included():
    # probabilities 0.4, 0.3, 0.2, 0.1: the token that crosses top_p is kept, the ones after it are not
    sampler = make_sampler()
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = probs.log()
    for p, expected in [(0.5, {0, 1}), (0.75, {0, 1, 2}), (0.35, {0}), (1.0, {0, 1, 2, 3})]:
        rows = 400
        seqs = [seq(temperature=1.0, top_p=p) for _ in range(rows)]
        out = sampler(logits.expand(rows, 4).contiguous(), seqs)
        assert set(out) == expected, p


def test_top_k_and_top_p_combined():
    sampler = make_sampler()
    vocab, rows = 50, 500
    base = torch.randn(vocab)
    k = 10
    topk = base.topk(k)
    # top_p is applied to the distribution renormalised over the top-k tokens
    renorm = torch.full((vocab,), 0.0, dtype=torch.float64)
    renorm[topk.indices] = topk.values.double().softmax(-1)
    allowed = top_p_set(renorm, 0.6)
    assert allowed <= set(topk.indices.tolist())
    seqs = [seq(temperature=1.0, top_k=k, top_p=0.6) for _ in range(rows)]
    out = sampler(base.expand(rows, vocab).contiguous(), seqs)
    assert set(out) <= allowed


def test_unfiltered_row_unchanged_by_filtered_neighbour():
    # a row with top_k=0, top_p=1.0 keeps its whole distribution, whatever else is in the batch
    row = torch.tensor([0.0, -30.0, -30.0, -30.0, -30.0])  # p[0] rounds to 1.0 in float32
    logits = torch.stack([row, row])
    out = DefaultSampler.filter_top_k_top_p(logits, [SamplingParams(), SamplingParams(top_k=3)])
    assert torch.equal(out[0], row)


# --- seeds ----------------------------------------------------------------------------------


def run_stream(sampler, logits_steps, target, others_factory=None):
    """Sample `target` for every step's logits row 0, with optional other rows alongside; return its tokens."""
    tokens = []
    for step, row in enumerate(logits_steps):
        others = others_factory(step) if others_factory else []
        batch = [target] + [s for s, _ in others]
        logits = torch.stack([row] + [l for _, l in others])
        out = sampler(logits, batch)
        tokens.append(out[0])
    return tokens


def test_same_seed_same_stream_across_fresh_samplers():
    vocab = 1000
    steps = [torch.randn(vocab) for _ in range(20)]
    a = run_stream(make_sampler(), steps, seq(temperature=1.0, seed=42))
    torch.manual_seed(999)  # the global RNG must not matter
    b = run_stream(make_sampler(), steps, seq(temperature=1.0, seed=42))
    assert a == b
    # and the stream actually advances between steps (not the same noise every step)
    flat = [torch.zeros(vocab)] * 20
    c = run_stream(make_sampler(), flat, seq(temperature=1.0, seed=42))
    assert len(set(c)) > 10


def test_same_seed_in_same_sampler_different_requests():
    # two requests with the same seed get the same stream, even in the same batch
    sampler = make_sampler()
    vocab = 500
    s1, s2 = seq(temperature=0.9, seed=5), seq(temperature=0.9, seed=5)
    for _ in range(15):
        row = torch.randn(vocab)
        out = sampler(torch.stack([row, row]), [s1, s2])
        assert out[0] == out[1]


def test_seeded_row_independent_of_batch():
    vocab = 800
    steps = [torch.randn(vocab) for _ in range(12)]
    alone = run_stream(make_sampler(), steps, seq(temperature=1.0, seed=2024, top_k=200))

    # other rows: unseeded, seeded with other seeds, greedy, top-k/top-p filtered; varying count per step
    def others(step):
        rows = []
        for j in range(step % 4 + 1):
            kind = (step + j) % 4
            params = [dict(temperature=1.0), dict(temperature=0.8, seed=step * 10 + j),
                      dict(temperature=0), dict(temperature=1.3, top_k=5, top_p=0.9)][kind]
            rows.append((seq(**params), torch.randn(vocab)))
        return rows

    in_batch = run_stream(make_sampler(), steps, seq(temperature=1.0, seed=2024, top_k=200), others)
    assert alone == in_batch

    # also when it is not the first row
    sampler = make_sampler()
    target = seq(temperature=1.0, seed=2024, top_k=200)
    shuffled = []
    for step, row in enumerate(steps):
        other = [s for s, _ in others(step)]
        pos = step % (len(other) + 1)
        batch = other[:pos] + [target] + other[pos:]
        logits = torch.randn(len(batch), vocab)
        logits[pos] = row
        shuffled.append(sampler(logits, batch)[pos])
    assert alone == shuffled


def test_seeded_row_independent_of_unseeded_traffic_between_steps():
    # unseeded sampling (global RNG) between steps must not perturb a seeded stream
    vocab = 300
    steps = [torch.randn(vocab) for _ in range(10)]
    ref = run_stream(make_sampler(), steps, seq(temperature=1.0, seed=11))
    sampler = make_sampler()
    target = seq(temperature=1.0, seed=11)
    got = []
    for row in steps:
        sampler(torch.randn(5, vocab), [seq(temperature=1.0) for _ in range(5)])
        sampler(torch.randn(1, vocab), [seq(temperature=1.0, seed=99)])
        got.append(sampler(row[None], [target])[0])
    assert got == ref


def test_different_seeds_give_different_streams():
    vocab = 1000
    steps = [torch.zeros(vocab) for _ in range(20)]
    streams = [tuple(run_stream(make_sampler(), steps, seq(temperature=1.0, seed=s))) for s in range(5)]
    assert len(set(streams)) == 5


def test_release_restarts_stream():
    vocab = 1000
    steps = [torch.zeros(vocab) for _ in range(8)]
    sampler = make_sampler()
    target = seq(temperature=1.0, seed=77)
    first = run_stream(sampler, steps, target)
    sampler.release(target)
    assert run_stream(sampler, steps, target) == first
    sampler.release(seq(temperature=1.0))  # releasing an unknown/unseeded sequence is harmless


# --- distribution ---------------------------------------------------------------------------

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 0.3, 1.5])


def sample_many(params: dict, n: int = 20000, logits: torch.Tensor = LOGITS) -> list[int]:
    sampler = make_sampler()
    seqs = [seq(**params) for _ in range(n)]
    return sampler(logits.expand(n, len(logits)).contiguous(), seqs)


def assert_matches(tokens, expected: torch.Tensor, n: int):
    freq = empirical(tokens, len(expected))
    assert (freq - expected).abs().max() < 0.02, (freq, expected)
    # Pearson chi-square over cells with expected count >= 5; df <= 7, 99.99th percentile of chi2(7) is ~29.9
    mask = expected * n >= 5
    counts = freq * n
    chi2 = (((counts - expected * n) ** 2) / (expected * n))[mask].sum()
    assert chi2 < 30, (chi2, freq, expected)
    assert counts[~mask].sum() <= max(10, 3 * float(expected[~mask].sum() * n))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_distribution_matches_softmax(temperature):
    n = 20000
    expected = (LOGITS.double() / temperature).softmax(-1)
    assert_matches(sample_many(dict(temperature=temperature), n), expected, n)


def test_temperature_half_sharpens():
    n = 20000
    f1 = empirical(sample_many(dict(temperature=1.0), n), len(LOGITS))
    f05 = empirical(sample_many(dict(temperature=0.5), n), len(LOGITS))
    top = int(LOGITS.argmax())
    assert f05[top] > f1[top] + 0.1  # softmax: ~0.37 -> ~0.65
    # equivalent to squaring the probabilities and renormalising
    p = LOGITS.double().softmax(-1)
    assert (f05 - p**2 / (p**2).sum()).abs().max() < 0.02


def test_top_k_distribution_renormalised():
    n = 20000
    k = 3
    expected = torch.zeros(len(LOGITS), dtype=torch.float64)
    idx = LOGITS.topk(k).indices
    expected[idx] = LOGITS.double()[idx].softmax(-1)
    assert_matches(sample_many(dict(temperature=1.0, top_k=k), n), expected, n)


def test_top_p_distribution_renormalised():
    n = 20000
    p = LOGITS.double().softmax(-1)
    nucleus = sorted(top_p_set(p, 0.7))
    expected = torch.zeros(len(LOGITS), dtype=torch.float64)
    expected[nucleus] = p[nucleus] / p[nucleus].sum()
    assert_matches(sample_many(dict(temperature=1.0, top_p=0.7), n), expected, n)


def test_seeded_distribution_matches_softmax():
    # the seeded path (one generator per request) must draw from the same distribution
    n = 20000
    expected = LOGITS.double().softmax(-1)
    tokens = sample_many_seeded(n)
    assert_matches(tokens, expected, n)


def sample_many_seeded(n: int) -> list[int]:
    sampler = make_sampler()
    seqs = [seq(temperature=1.0, seed=s) for s in range(n)]
    return sampler(LOGITS.expand(n, len(LOGITS)).contiguous(), seqs)


# --- SamplingParams validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=-0.5), "top_p"),
        (dict(top_p=1.0001), "top_p"),
        (dict(top_p=2), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-3), "max_tokens"),
    ],
)
def test_sampling_params_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(temperature=0), dict(top_p=1.0), dict(top_p=1e-6), dict(top_k=0), dict(top_k=1), dict(max_tokens=1)],
)
def test_sampling_params_valid_edges(kwargs):
    SamplingParams(**kwargs)


# -- penalties, min_p and min_tokens: exact against transformers' logits processors ------------------

def grown(prompt, generated, **params) -> Sequence:
    s = Sequence(prompt, SamplingParams(**params), block_size=16)
    for token in generated:
        s.append_token(token)
    return s


def test_repetition_penalty_per_request_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    history = [torch.randint(0, 50, (12,), generator=g).tolist() for _ in range(4)]
    penalties = [1.3, 1.0, 0.8, 2.0]  # one per request, a neutral one among them
    seqs = [grown(h[:9], h[9:], temperature=0, repetition_penalty=p) for h, p in zip(history, penalties)]
    logits = torch.randn(4, 50, generator=g) * 3
    got = make_sampler().process(logits, seqs)
    for b, p in enumerate(penalties):
        want = RepetitionPenaltyLogitsProcessor(p)(torch.tensor([history[b]]), logits[b:b + 1].clone())[0]
        torch.testing.assert_close(got[b], want, rtol=0, atol=0)


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    """OpenAI's definition (vLLM's too): logit - frequency * count - presence * [count > 0], over the output."""
    s = grown([5, 5, 6], [6, 7, 7, 7], frequency_penalty=0.5, presence_penalty=0.25)
    got = make_sampler().process(torch.zeros(1, 10), [s])[0]
    want = torch.zeros(10)
    want[6] = -(0.5 * 1 + 0.25)  # once in the output; its prompt occurrence does not count
    want[7] = -(0.5 * 3 + 0.25)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_min_p_matches_transformers():
    from transformers import MinPLogitsWarper

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 64, generator=g) * 2
    for min_p in (0.05, 0.3):
        got = DefaultSampler.filter_min_p(logits, [SamplingParams(min_p=min_p)] * 3)
        want = MinPLogitsWarper(min_p)(None, logits.clone())
        assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[~got.isinf()], want[~want.isinf()])


def test_min_p_keeps_sampling_inside_the_kept_set():
    logits = torch.tensor([[4.0, 3.9, 0.0, -1.0, -2.0] * 4])
    s = seq(temperature=1.0, min_p=0.5)
    kept = {i for i in range(20) if i % 5 in (0, 1)}
    sampler = make_sampler()
    assert {sampler(logits, [s])[0] for _ in range(200)} <= kept


def test_min_tokens_masks_eos_and_stop_tokens_like_transformers():
    from transformers import MinNewTokensLengthLogitsProcessor

    sampler = make_sampler(eos_token_ids=frozenset({2}))
    logits = torch.randn(1, 8)
    logits[0, 2] = logits[0, 6] = 50  # the model wants to stop
    early = grown([1, 3], [4], temperature=0, min_tokens=3, stop_token_ids=[6])
    want = MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=2, min_new_tokens=3, eos_token_id=[2, 6])(
        torch.tensor([early.token_ids]), logits.clone())
    torch.testing.assert_close(sampler.process(logits, [early]), want, rtol=0, atol=0)
    assert sampler(logits, [early])[0] not in (2, 6)
    done = grown([1, 3], [4, 5, 4], temperature=0, min_tokens=3, stop_token_ids=[6])
    assert sampler(logits, [done])[0] in (2, 6)  # from the third token on, stopping is allowed


def test_neutral_settings_change_nothing():
    logits = torch.randn(3, 40)
    seqs = [seq(temperature=0), seq(temperature=0, repetition_penalty=1.0, min_p=0.0), seq(temperature=0)]
    assert torch.equal(make_sampler().process(logits, seqs), logits)


# --- edge values (issue 23): a distribution that collapses gives the argmax, never token 0 ----
TINY = [1e-6, 1e-10, 1e-20, 1e-30, 1e-37, 1e-38, 1e-40, 1e-45, 1e-46, 1e-100, 1e-300, 5e-324]


def clear_winner_logits(rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """Random logits with one winner per row (not token 0) by a margin every dtype keeps."""
    logits = torch.randn(rows, vocab)
    winners = torch.randint(1, vocab, (rows,))
    logits[torch.arange(rows), winners] = logits.max(dim=-1).values + 0.5
    return logits.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_tiny_temperature_or_top_p_gives_the_argmax(dtype, field):
    sampler = make_sampler()
    logits = clear_winner_logits(len(TINY) * 2, 300, dtype)
    argmax = logits.argmax(dim=-1).tolist()
    other = {"temperature": {"top_p": 1.0}, "top_p": {"temperature": 1.0}}[field]
    # each tiny value twice: unseeded and seeded, beside a greedy row and an ordinary sampled row
    seqs = [seq(**{field: value}, **other, seed=seed) for value in TINY for seed in (None, 11)]
    extra = [seq(temperature=0), seq(temperature=1.0)]
    batch = torch.cat([logits, clear_winner_logits(2, 300, dtype)])
    for _ in range(3):
        out = sampler(batch, seqs + extra)
        assert out[:len(seqs)] == argmax, [(s.sampling_params, o, a) for s, o, a in zip(seqs, out, argmax) if o != a]
        assert 0 <= out[-1] < 300


# --- overlap scheduling ---------------------------------------------------------------------


def test_tokens_come_as_a_tensor_on_the_logits_device():
    """The default sampler returns a 1-D int64 tensor (under async_scheduling no host sync on CUDA);
    its tokens, and a seeded request's stream, are the ones a second sampler gives."""
    logits = torch.randn(5, 50)
    seqs = [seq(temperature=0), seq(temperature=0.9, seed=5), seq(temperature=0.7, top_k=5, seed=6),
            seq(temperature=1.1, top_p=0.8, seed=7), seq(temperature=0.8, min_p=0.1, seed=8, repetition_penalty=1.2)]
    listed, tensored = make_sampler(), DefaultSampler(DefaultSampler.Config(), device=CPU)
    for _ in range(3):
        want, got = listed(logits, seqs), tensored(logits, seqs)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int64 and got.shape == (5,)
        assert got.tolist() == want
