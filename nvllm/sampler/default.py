"""Greedy (temperature 0), temperature, top-k, top-p, min-p, per-request seeds, min_tokens, and
the repetition (Hugging Face), presence and frequency (OpenAI) penalties: every SamplingParams
field, per request, vectorised over the batch.

Order, as vLLM's: penalties and min_tokens change the logits (greedy takes the argmax after them),
then temperature, min_p, top-k and top-p. Sampling is the exponential race (Gumbel-max):
argmax(p / E) with E ~ Exp(1) draws from p without a host sync. A seeded request draws its noise
from its own generator, so its tokens do not depend on what else is in the batch."""
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from nvllm.hookspecs import hookimpl
from nvllm.sampler.base import Sampler
from nvllm.sequence import Sequence


NO_PENALTIES = (1.0, 0.0, 0.0)
_PENALTIES = attrgetter("repetition_penalty", "frequency_penalty", "presence_penalty")  # a request's, in that order
_SEED = attrgetter("seed")
FLOAT32_MAX, TINY = torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny
REPETITION_MIN = 1e-30


def per_row(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One value per row, on the device (through numpy: faster than torch.tensor from a list); to
    CUDA from pinned memory, so the host never waits for the device (overlap scheduling samples a
    step while the device may still be computing it)."""
    host = torch.from_numpy(np.array(values, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return host if device.type == "cpu" else host.pin_memory().to(device, non_blocking=True)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor | list[int]:
    """Each row's argmax (the first, on ties): float32 on a CPU through numpy, a list (torch's CPU
    argmax over a vocabulary-wide row takes several times as long), else a tensor on the device."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        return logits.numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1)


class DefaultSampler(Sampler):
    name = "default"

    @dataclass
    class Config:
        name: str = "default"

    def __init__(self, config, device, **kwargs):
        super().__init__(config, device, **kwargs)
        self.generators: dict[int, torch.Generator] = {}
        self.history: dict[int, torch.Tensor] = {}  # seq id -> its token ids on the device (penalties)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        logits = self.process(logits, seqs)
        if not any(seq.sampling_params.temperature for seq in seqs):
            return argmax_rows(logits)
        params = [seq.sampling_params for seq in seqs]
        temperature = [sp.temperature for sp in params]
        greedy = temperature.count(0)
        # a temperature below float32's smallest normal still means "collapse onto the argmax", one above
        # its largest "flatten": clamp it into float32's range (a greedy row's 0 divides by 1: its argmax
        # is taken below), and scale logits with their maximum at 0, so nothing overflows to inf / inf
        # (or -inf / inf) = nan
        temperature = np.array(temperature, dtype=np.float64)
        temperature = np.where(temperature == 0, 1.0, temperature.clip(TINY, FLOAT32_MAX))
        logits = logits.float()
        scaled = logits - logits.amax(dim=-1, keepdim=True)
        scaled /= per_row(temperature, torch.float32, logits.device)[:, None]
        probs = self.filter_top_k_top_p(self.filter_min_p(scaled, params), params).softmax(dim=-1)
        # Exp(1) noise drawn as -log(U), U uniform in [0, 1): the same distribution as exponential_'s, far
        # cheaper to draw on a CPU; a seeded request draws its row from its own generator
        uniform = torch.rand_like(probs)
        seeds = list(map(_SEED, params))
        if seeds.count(None) < len(seeds):
            for b, seed in enumerate(seeds):
                if seed is not None and params[b].temperature > 0:
                    uniform[b] = torch.rand(uniform.shape[1], generator=self._generator(seqs[b]), device=uniform.device)
        sampled = (probs / uniform.log_().neg_()).argmax(dim=-1)
        if not greedy:
            return sampled
        is_greedy = per_row([sp.temperature == 0 for sp in params], torch.bool, logits.device)
        return torch.where(is_greedy, logits.argmax(dim=-1), sampled)

    def process(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """The logits after the penalties and min_tokens, for the rows that ask for them."""
        penalties = list(map(self.penalties, seqs))
        if penalties.count(NO_PENALTIES) < len(seqs):  # (count(): the usual batch, without a Python loop)
            rows = [b for b, p in enumerate(penalties) if p != NO_PENALTIES]
            logits = logits.to(torch.float32, copy=True)  # a divided logit must not overflow a narrower dtype
            logits[rows] = self.penalize(logits[rows], [seqs[b] for b in rows], [penalties[b] for b in rows])
        if any(seq.sampling_params.min_tokens for seq in seqs):
            masked = [(b, t) for b, seq in enumerate(seqs) if seq.num_completion_tokens < seq.sampling_params.min_tokens
                      for t in self.eos_token_ids | set(seq.sampling_params.stop_token_ids or ())]
            if penalties.count(NO_PENALTIES) == len(seqs):  # (else the penalties made a copy already)
                logits = logits.clone()
            logits[[b for b, _ in masked], [t for _, t in masked]] = float("-inf")
        return logits

    def penalties(self, seq: Sequence) -> tuple[float, float, float]:
        """(repetition, frequency, presence) penalties for `seq`: its request's. A sampler that sets
        them another way (plugins/nvllm-penalties: one setting for a whole run) overrides this."""
        return _PENALTIES(seq.sampling_params)

    def penalize(self, logits: torch.Tensor, seqs: list[Sequence], penalties: list[tuple[float, float, float]]) -> torch.Tensor:
        """Repetition penalty over the prompt and output (transformers' RepetitionPenaltyLogitsProcessor:
        a positive logit divided by it, a negative one multiplied), then the presence and frequency
        penalties over the output only (OpenAI's: logit - frequency * count - presence * [count > 0])."""
        vocab, dev = logits.shape[-1], logits.device
        # padding points at an extra column that is dropped, so it counts for nothing
        ids = pad_sequence([self._history(seq) for seq in seqs], batch_first=True, padding_value=vocab)
        repetition, frequency, presence = torch.tensor(penalties, dtype=logits.dtype, device=dev).T[:, :, None]
        # a repetition penalty past 1e-30 or 1e30 acts as that bound: the seen tokens' logits are already
        # ordered beyond any other's, and a float32 penalty of 0 or inf would give inf or 0 * inf = nan
        repetition = repetition.clamp(REPETITION_MIN, 1 / REPETITION_MIN)
        seen = torch.zeros(len(seqs), vocab + 1, dtype=torch.bool, device=dev).scatter_(1, ids, True)[:, :vocab]
        logits = torch.where(seen, torch.where(logits > 0, logits / repetition, logits * repetition), logits)
        if frequency.any() or presence.any():
            num_prompt = torch.tensor([seq.num_prompt_tokens for seq in seqs], device=dev)
            generated = ids.masked_fill(torch.arange(ids.shape[1], device=dev)[None, :] < num_prompt[:, None], vocab)
            counts = torch.zeros(len(seqs), vocab + 1, dtype=logits.dtype, device=dev)
            counts = counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))[:, :vocab]
            logits = logits - frequency * counts - presence * (counts > 0)
        return logits

    @staticmethod
    def filter_min_p(logits: torch.Tensor, params) -> torch.Tensor:
        """Drop tokens whose probability is below min_p times the most likely one's (transformers'
        MinPLogitsWarper)."""
        if not any(sp.min_p for sp in params):
            return logits
        min_p = torch.tensor([sp.min_p for sp in params], dtype=logits.dtype, device=logits.device)[:, None]
        probs = logits.softmax(dim=-1)
        return logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))

    @staticmethod
    def filter_top_k_top_p(logits: torch.Tensor, params) -> torch.Tensor:
        top_k = [sp.top_k for sp in params]
        top_p = [sp.top_p for sp in params]
        if not any(top_k) and all(p == 1.0 for p in top_p):
            return logits
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[-1]
        k = per_row([t if t > 0 else vocab for t in top_k], torch.int64, logits.device)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= k[:, None], float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        p = per_row(top_p, probs.dtype, logits.device)
        # drop a token once the more likely ones already reach top_p (the first is always kept)
        drop = (probs.cumsum(dim=-1) - probs >= p[:, None]) & (p < 1)[:, None]  # rounding must not touch top_p=1 rows
        drop[:, 0] = False  # even a top_p that rounds to 0 in float32 keeps the most likely token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, order, sorted_logits)

    def _history(self, seq: Sequence) -> torch.Tensor:
        """`seq`'s token ids on the device, grown by the new tokens only (one small copy a step)."""
        cached = self.history.get(seq.seq_id)
        done = 0 if cached is None else len(cached)
        if done < len(seq):
            new = torch.tensor(seq.token_ids[done:], dtype=torch.int64, device=self.device)
            cached = self.history[seq.seq_id] = new if cached is None else torch.cat([cached, new])
        return cached

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self.generators.get(seq.seq_id)
        if gen is None:
            gen = self.generators[seq.seq_id] = torch.Generator(device=self.device)
            gen.manual_seed(seq.sampling_params.seed)
        return gen

    def release(self, seq: Sequence):
        self.generators.pop(seq.seq_id, None)
        self.history.pop(seq.seq_id, None)


@hookimpl
def register_samplers(register):
    register(DefaultSampler)
