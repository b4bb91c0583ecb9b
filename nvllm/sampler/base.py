"""The sampler family: logits -> next token id, one per sequence."""
from abc import ABC, abstractmethod

import torch

from nvllm.sequence import Sequence


class Sampler(ABC):
    name: str
    # the model's end-of-sequence ids (the engine sets them): SamplingParams.min_tokens masks them
    eos_token_ids: frozenset[int] = frozenset()
    # set by the model runner under async_scheduling: a sampler may then return its tokens as a 1-D
    # integer tensor on the logits' device, so that the host need not wait for the device
    device_tokens: bool = False

    def __init__(self, config, device: torch.device):
        self.config = config
        self.device = device

    @abstractmethod
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits [batch, vocab] float32, row b for seqs[b]; returns one token id per row (a list,
        or with `device_tokens` a tensor)."""

    def release(self, seq: Sequence) -> None:
        """Forget per-request state once `seq` has finished."""
