"""The sampler family: logits -> next token id, one per sequence."""
from abc import ABC, abstractmethod

import torch

from nvllm.sequence import Sequence


class Sampler(ABC):
    name: str

    def __init__(self, config, device: torch.device, eos_token_ids: frozenset[int] = frozenset()):
        """`eos_token_ids`: the model's end-of-sequence ids (SamplingParams.min_tokens masks them)."""
        self.config = config
        self.device = device
        self.eos_token_ids = eos_token_ids

    @abstractmethod
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor | list[int]:
        """logits [batch, vocab] float32, row b for seqs[b]; returns one token id per row: a 1-D
        integer tensor on the logits' device (the host need not wait for the device: overlap
        scheduling samples a step while the device may still compute it), or a list."""

    def release(self, seq: Sequence) -> None:
        """Forget per-request state once `seq` has finished."""


def as_list(tokens: torch.Tensor | list[int]) -> list[int]:
    """A sampler's tokens (a tensor, or a list) as a list on the host."""
    return tokens if tokens.__class__ is list else tokens.tolist()
