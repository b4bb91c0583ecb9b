"""SamplerSuite: greedy, seeds, temperature and top-k behave."""
import random

import torch

from nvllm import registry
from nvllm.sampler.base import as_list
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence

from nvllm.testing.common import ComponentSuite


class SamplerSuite(ComponentSuite):
    """Greedy (temperature 0) is deterministic, row-independent and keeps a clear winner; a seeded
    request's stream depends only on its seed, never on the batch or the global RNG; different
    seeds differ; temperature > 0 really samples; top_k is honoured. Sequences grow as in the
    engine, so samplers that read the token history are exercised."""

    family = "sampler"
    vocab: int = 256

    def make(self, config):
        return Listed(registry.build("sampler", config, device=torch.device("cpu")))

    def seq(self, rng: random.Random, **params) -> Sequence:
        return Sequence([rng.randrange(self.vocab) for _ in range(rng.randint(1, 12))], SamplingParams(**params), 16)

    def test_one_valid_token_per_row(self, config):
        rng = random.Random(0)
        seqs = [self.seq(rng, temperature=0), self.seq(rng, temperature=1.0), self.seq(rng, temperature=0.7, top_k=5),
                self.seq(rng, temperature=1.2, top_p=0.5), self.seq(rng, temperature=1.0, seed=3)]
        out = self.make(config)(torch.randn(len(seqs), self.vocab), seqs)
        assert isinstance(out, list) and len(out) == len(seqs)
        assert all(isinstance(t, int) and 0 <= t < self.vocab for t in out)

    def test_greedy_keeps_a_clear_winner(self, config):
        rng, sampler = random.Random(1), self.make(config)
        seqs = [self.seq(rng, temperature=0, **p) for p in ({}, {"top_k": 3}, {"top_p": 0.1}, {"seed": 5}, {})]
        winners = [rng.randrange(self.vocab) for _ in seqs]
        for _ in range(3):
            seqs[-1].append_token(winners[-1])  # even a token the request already repeats
        logits = torch.randn(len(seqs), self.vocab)
        logits[range(len(seqs)), winners] += 30
        assert sampler(logits, seqs) == winners

    def test_greedy_is_deterministic_and_row_independent(self, config):
        rng, sampler = random.Random(2), self.make(config)
        seqs = [self.seq(rng, temperature=0) for _ in range(6)]
        logits = torch.randn(6, self.vocab)
        torch.manual_seed(0)
        first = sampler(logits, seqs)
        torch.manual_seed(1)
        assert sampler(logits, seqs) == first
        assert [sampler(logits[b:b + 1], [s])[0] for b, s in enumerate(seqs)] == first

    def stream(self, sampler, seq: Sequence, steps: list[torch.Tensor], neighbours: bool, rng: random.Random):
        """Tokens sampled for `seq` over `steps`, appended to it as the engine does."""
        tokens = []
        for row in steps:
            others = [self.seq(rng, temperature=rng.choice([0, 0.8, 1.5]), seed=rng.choice([None, 9]))
                      for _ in range(rng.randrange(4) if neighbours else 0)]
            pos = rng.randrange(len(others) + 1)
            batch = others[:pos] + [seq] + others[pos:]
            logits = torch.randn(len(batch), self.vocab)
            logits[pos] = row
            token = sampler(logits, batch)[pos]
            seq.append_token(token)
            tokens.append(token)
        return tokens

    def test_seed_alone_decides_the_stream(self, config):
        steps = [torch.randn(self.vocab) * 0.5 for _ in range(12)]
        prompt = [7, 8, 9]
        torch.manual_seed(0)
        alone = self.stream(self.make(config), Sequence(prompt, SamplingParams(temperature=1.0, seed=42), 16),
                            steps, False, random.Random(0))
        torch.manual_seed(1)
        sampler = self.make(config)
        target = Sequence(prompt, SamplingParams(temperature=1.0, seed=42), 16)
        assert self.stream(sampler, target, steps, True, random.Random(1)) == alone, "batch or global RNG changed it"
        sampler.release(target)
        again = Sequence(prompt, SamplingParams(temperature=1.0, seed=42), 16)  # a new request, same seed
        assert self.stream(sampler, again, steps, True, random.Random(2)) == alone, "state leaked across requests"
        sampler.release(Sequence([1], SamplingParams(), 16))  # releasing an unknown request is harmless

    def test_different_seeds_differ_and_unseeded_samples(self, config):
        flat = [torch.zeros(self.vocab) for _ in range(10)]
        streams = {tuple(self.stream(self.make(config), Sequence([1], SamplingParams(temperature=1.0, seed=s), 16),
                                     flat, False, random.Random(0))) for s in range(4)}
        assert len(streams) == 4, "different seeds gave the same tokens"
        rng = random.Random(3)
        seqs = [self.seq(rng, temperature=1.0) for _ in range(64)]
        assert len(set(self.make(config)(torch.zeros(64, self.vocab), seqs))) > 16, "temperature 1 does not sample"

    def test_top_k_is_honoured(self, config):
        rng, sampler = random.Random(4), self.make(config)
        top = rng.sample(range(16, self.vocab), 3)  # history tokens stay below 16: penalties cannot reorder
        seqs = [Sequence([rng.randrange(16) for _ in range(5)], SamplingParams(temperature=2.0, top_k=3), 16)
                for _ in range(64)]
        logits = torch.randn(64, self.vocab) * 0.1
        logits[:, top] += 5
        assert set(sampler(logits, seqs)) <= set(top)


class Listed:
    """A sampler whose tokens (a tensor or a list: either is allowed) come back as a list, as the
    engine's step reads them; anything else is the sampler's own."""
    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        return as_list(self.sampler(logits, seqs))

    def __getattr__(self, name):
        return getattr(self.sampler, name)
