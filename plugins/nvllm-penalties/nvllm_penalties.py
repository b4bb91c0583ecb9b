"""Repetition (Hugging Face), frequency and presence (OpenAI) penalties applied to the logits
before the built-in sampler's temperature, top-k, top-p and seeds. Each request's token ids live
on the device and grow by the new tokens only, so a step costs one small copy per request."""
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from nvllm import hookimpl
from nvllm.sequence import Sequence
from nvllm.sampler.default import DefaultSampler


class PenaltySampler(DefaultSampler):
    name = "penalties"

    @dataclass
    class Config:
        name: str = "penalties"
        # divides the logits of tokens already in the prompt or output (multiplies negative ones); 1.0: off
        repetition_penalty: float = 1.1
        # subtracted from a token's logit once per time it was generated; 0.0: off
        frequency_penalty: float = 0.0
        # subtracted from a token's logit if it was generated at all; 0.0: off
        presence_penalty: float = 0.0

        def __post_init__(self):
            assert self.repetition_penalty > 0, "sampler.repetition_penalty must be > 0"

    def __init__(self, config, device):
        super().__init__(config, device)
        self.history: dict[int, torch.Tensor] = {}

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        c = self.config
        if c.repetition_penalty != 1.0 or c.frequency_penalty or c.presence_penalty:
            logits = self.penalize(logits, seqs)
        return super().__call__(logits, seqs)

    def penalize(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        c, vocab = self.config, logits.shape[-1]
        # padding points at an extra column that is dropped, so it counts for nothing
        ids = pad_sequence([self._token_ids(seq) for seq in seqs], batch_first=True, padding_value=vocab)
        seen = torch.zeros(len(seqs), vocab + 1, dtype=torch.bool, device=logits.device)
        seen = seen.scatter_(1, ids, True)[:, :vocab]
        repeated = torch.where(logits > 0, logits / c.repetition_penalty, logits * c.repetition_penalty)
        logits = torch.where(seen, repeated, logits)
        if c.frequency_penalty or c.presence_penalty:
            positions = torch.arange(ids.shape[1], device=ids.device)
            num_prompt = torch.tensor([seq.num_prompt_tokens for seq in seqs], device=ids.device)
            generated = ids.masked_fill(positions[None, :] < num_prompt[:, None], vocab)
            counts = torch.zeros(len(seqs), vocab + 1, dtype=logits.dtype, device=logits.device)
            counts = counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))[:, :vocab]
            logits = logits - c.frequency_penalty * counts - c.presence_penalty * (counts > 0)
        return logits

    def _token_ids(self, seq: Sequence) -> torch.Tensor:
        cached = self.history.get(seq.seq_id)
        done = 0 if cached is None else len(cached)
        if done < len(seq):
            new = torch.tensor(seq.token_ids[done:], dtype=torch.int64, device=self.device)
            cached = self.history[seq.seq_id] = new if cached is None else torch.cat([cached, new])
        return cached

    def release(self, seq: Sequence):
        super().release(seq)
        self.history.pop(seq.seq_id, None)


@hookimpl
def register_samplers(register):
    register(PenaltySampler)
