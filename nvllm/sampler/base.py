"""The sampler family: logits -> next token id, one per sequence."""
from abc import ABC, abstractmethod

import torch

from nvllm.sequence import Sequence


class Sampler(ABC):
    name: str

    def __init__(self, config, device: torch.device, eos_token_ids: frozenset[int] = frozenset(),
                 device_tokens: bool = False):
        """`eos_token_ids`: the model's end-of-sequence ids (SamplingParams.min_tokens masks them);
        `device_tokens` (overlap scheduling): return the tokens as a 1-D integer tensor on the
        logits' device, so that the host need not wait for the device; else a list."""
        self.config = config
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.device_tokens = device_tokens

    @abstractmethod
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits [batch, vocab] float32, row b for seqs[b]; returns one token id per row (a list,
        or with `device_tokens` a tensor)."""

    def release(self, seq: Sequence) -> None:
        """Forget per-request state once `seq` has finished."""
