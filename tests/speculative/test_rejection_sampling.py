"""With temperature > 0, verification keeps the target's distribution: thousands of samples of a
tiny random model's first three tokens, drafted by the model itself (so drafts are accepted about
as often as they are rejected), pass a chi-square test against the exact probabilities computed
with transformers, and fail it against a distribution that favours the drafted token a little."""
import itertools

import torch

from nvllm import LLM, SamplingParams
from nvllm.tools.checkpoint import make_random_checkpoint

TOP_K, TEMPERATURE, NUM_SAMPLES = 4, 1.0, 3000
PROMPT = [11, 22, 33, 44, 55, 66]


def exact_distribution(path) -> dict[tuple[int, ...], float]:
    """P(t1, t2, t3) of temperature-1 top-4 sampling, from transformers' logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def step(prefix) -> dict[int, float]:
        with torch.inference_mode():
            logits = model(torch.tensor([PROMPT + list(prefix)])).logits[0, -1] / TEMPERATURE
        top = logits.topk(TOP_K)
        return dict(zip(top.indices.tolist(), top.values.softmax(-1).tolist()))

    probs = {}
    for t1, p1 in step(()).items():
        for t2, p2 in step((t1,)).items():
            for t3, p3 in step((t1, t2)).items():
                probs[t1, t2, t3] = p1 * p2 * p3
    return probs


def chi_square_p_value(counts: dict, probs: dict, n: int) -> float:
    assert set(counts) <= set(probs), "a sample the distribution cannot produce"
    stat = sum((counts.get(cell, 0) - n * p) ** 2 / (n * p) for cell, p in probs.items())
    dof = len(probs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


def test_samples_follow_the_target_distribution(tmp_path):
    path = make_random_checkpoint("qwen3", str(tmp_path), preset="tiny", seed=0, initializer_range=0.1)
    probs = exact_distribution(path)
    params = SamplingParams(temperature=TEMPERATURE, top_k=TOP_K, max_tokens=3, ignore_eos=True)
    # the draft is the whole two-layer model: its greedy token, accepted with the target's probability of it
    with LLM(path, speculative={"name": "draft", "num_layers": 2, "num_speculative_tokens": 2,
                                "max_num_draft_tokens": 2 * NUM_SAMPLES},  # every request drafts
             kv_cache={"block_size": 8}, max_model_len=64) as llm:
        torch.manual_seed(0)
        outputs = llm.generate([PROMPT] * NUM_SAMPLES, params, use_tqdm=False)
        stats = llm.engine.stats.spec_decode
    counts = {}
    for out in outputs:
        counts[tuple(out.outputs[0].token_ids)] = counts.get(tuple(out.outputs[0].token_ids), 0) + 1
    assert 0.2 < stats.num_accepted_tokens / stats.num_draft_tokens < 0.8, stats  # both paths well exercised
    assert chi_square_p_value(counts, probs, NUM_SAMPLES) > 1e-3
    # the power to see a verifier that accepts drafts a little too often: a tenth of the mass moved
    # onto the likeliest continuation is rejected
    likeliest = max(probs, key=probs.get)
    biased = {cell: 0.9 * p + (0.1 if cell == likeliest else 0.0) for cell, p in probs.items()}
    assert chi_square_p_value(counts, biased, NUM_SAMPLES) < 1e-3
