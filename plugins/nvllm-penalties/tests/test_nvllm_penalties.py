"""nvllm-penalties: nvllm's sampler contract, then its run-wide penalties against transformers and
the OpenAI formula, and a request's own penalties taking precedence."""
import random

import pytest
import torch

from nvllm import LLM, SamplingParams, registry
from nvllm.sequence import Sequence
from nvllm.plugins import load_plugins
from nvllm.testing import SamplerSuite


class TestPenaltiesConformance(SamplerSuite):
    name = "penalties"
    configs = [{}, {"repetition_penalty": 1.0}, {"repetition_penalty": 1.5, "frequency_penalty": 0.5,
                                                 "presence_penalty": 0.5}]


def make(**fields):
    load_plugins()
    cls = registry.get("sampler", "penalties")
    return cls(cls.Config(**fields), device=torch.device("cpu"))


def grown(prompt, generated) -> Sequence:
    seq = Sequence(prompt, SamplingParams(temperature=0), block_size=16)
    for token in generated:
        seq.append_token(token)
    return seq


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = random.Random(0)
    seqs = [grown([rng.randrange(50) for _ in range(9)], [rng.randrange(50) for _ in range(3)]) for _ in range(4)]
    logits = torch.randn(4, 50) * 3
    want = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([s.token_ids for s in seqs]), logits.clone())
    sampler = make(repetition_penalty=1.3)
    torch.testing.assert_close(sampler.penalize(logits, seqs, [sampler.penalties(s) for s in seqs]), want)


def test_frequency_and_presence_count_generated_tokens_only():
    seq = grown([5, 5, 6], [6, 7, 7, 7])
    logits = torch.zeros(1, 10)
    sampler = make(repetition_penalty=1.0, frequency_penalty=0.5, presence_penalty=0.25)
    got = sampler.penalize(logits, [seq], [sampler.penalties(seq)])[0]
    want = torch.zeros(10)
    want[6] = -(0.5 * 1 + 0.25)  # once in the output (its prompt occurrence does not count)
    want[7] = -(0.5 * 3 + 0.25)
    torch.testing.assert_close(got, want)


def test_history_follows_the_sequence_across_steps_and_release():
    sampler = make(repetition_penalty=2.0)
    seq = grown([1], [])
    logits = torch.ones(1, 4)
    assert sampler.penalize(logits, [seq], [sampler.penalties(seq)])[0].tolist() == [1.0, 0.5, 1.0, 1.0]
    seq.append_token(3)
    assert sampler.penalize(logits, [seq], [sampler.penalties(seq)])[0].tolist() == [1.0, 0.5, 1.0, 0.5]
    sampler.release(seq)
    assert seq.seq_id not in sampler.history


def test_neutral_settings_are_the_default_sampler():
    rng = random.Random(1)
    seqs = [Sequence([rng.randrange(100) for _ in range(6)], SamplingParams(temperature=t, seed=s), 16)
            for t, s in ((0, None), (1.0, 3), (0.7, 4))]
    logits = torch.randn(3, 100)
    default = registry.get("sampler", "default")
    assert torch.equal(make(repetition_penalty=1.0)(logits, seqs), default(default.Config(), torch.device("cpu"))(logits, seqs))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("tiny-qwen3")), preset="tiny", seed=0)


def test_greedy_with_repetition_penalty_matches_transformers_generate(tiny_model):
    from transformers import AutoModelForCausalLM

    rng = random.Random(2)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (4, 20)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    want = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, repetition_penalty=1.3,
                             max_new_tokens=16, pad_token_id=0)
        want.append(out[0, len(prompt):].tolist())
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    with LLM(tiny_model, sampler={"name": "penalties", "repetition_penalty": 1.3}) as llm:
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    with LLM(tiny_model) as llm:
        plain = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    assert got == want
    assert got != plain, "the penalty changed nothing: the test would not notice a no-op sampler"


def test_a_request_that_sets_its_own_penalties_keeps_them():
    sampler = make(repetition_penalty=1.3)
    own = Sequence([1, 2], SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=0.5), 16)
    assert sampler.penalties(own) == (2.0, 0.0, 0.5)
    assert sampler.penalties(grown([1, 2], [])) == (1.3, 0.0, 0.0)
