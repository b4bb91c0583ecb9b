"""Penalties set once for a whole run (`sampler=penalties sampler.repetition_penalty=1.2`): every
request that sets none of its own gets the sampler's repetition (Hugging Face), frequency and
presence (OpenAI) penalties. The built-in sampler does the work (nvllm/sampler/default.py applies
each request's SamplingParams penalties); this package shows how a sampler plugin changes one
decision of it, `penalties(seq)`, and nothing else."""
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.sampler.default import NO_PENALTIES, DefaultSampler
from nvllm.sequence import Sequence


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

    def penalties(self, seq: Sequence) -> tuple[float, float, float]:
        own = super().penalties(seq)
        c = self.config
        return own if own != NO_PENALTIES else (c.repetition_penalty, c.frequency_penalty, c.presence_penalty)


@hookimpl
def register_samplers(register):
    register(PenaltySampler)
