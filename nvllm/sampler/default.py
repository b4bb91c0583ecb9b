"""Greedy (temperature 0), temperature, top-k, top-p and per-request seeds.

Sampling is the exponential race (Gumbel-max): argmax(p / E) with E ~ Exp(1) draws from p
without a host sync. A seeded request draws its noise from its own generator, so its tokens do
not depend on what else is in the batch."""
from dataclasses import dataclass

import torch

from nvllm.sequence import Sequence
from nvllm.hookspecs import hookimpl
from nvllm.sampler.base import Sampler


class DefaultSampler(Sampler):
    name = "default"

    @dataclass
    class Config:
        name: str = "default"

    def __init__(self, config, device):
        super().__init__(config, device)
        self.generators: dict[int, torch.Generator] = {}

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        params = [seq.sampling_params for seq in seqs]
        greedy = logits.argmax(dim=-1)
        if all(sp.temperature == 0 for sp in params):
            return greedy.tolist()
        temperatures = torch.tensor([sp.temperature or 1.0 for sp in params], device=logits.device)
        probs = self.filter_top_k_top_p(logits.float() / temperatures[:, None], params).softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(1)
        for b, (seq, sp) in enumerate(zip(seqs, params)):
            if sp.seed is not None and sp.temperature > 0:
                noise[b].exponential_(1, generator=self._generator(seq))
        sampled = (probs / noise.clamp_min(1e-10)).argmax(dim=-1)
        is_greedy = torch.tensor([sp.temperature == 0 for sp in params], device=logits.device)
        return torch.where(is_greedy, greedy, sampled).tolist()

    @staticmethod
    def filter_top_k_top_p(logits: torch.Tensor, params) -> torch.Tensor:
        top_k = [sp.top_k for sp in params]
        top_p = [sp.top_p for sp in params]
        if not any(top_k) and all(p == 1.0 for p in top_p):
            return logits
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[-1]
        k = torch.tensor([t if t > 0 else vocab for t in top_k], device=logits.device)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        p = torch.tensor(top_p, device=logits.device, dtype=probs.dtype)
        # drop a token once the more likely ones already reach top_p (the first is always kept)
        drop = (probs.cumsum(dim=-1) - probs >= p[:, None]) & (p < 1)[:, None]  # rounding must not touch top_p=1 rows
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, order, sorted_logits)

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self.generators.get(seq.seq_id)
        if gen is None:
            gen = self.generators[seq.seq_id] = torch.Generator(device=self.device)
            gen.manual_seed(seq.sampling_params.seed)
        return gen

    def release(self, seq: Sequence):
        self.generators.pop(seq.seq_id, None)


@hookimpl
def register_samplers(register):
    register(DefaultSampler)
