"""What overlap scheduling (async_scheduling) holds between two steps: the launched step, whose
tokens the host has not seen yet, and how the next step's inputs get those tokens on the device.

The scheduler counts a launched step's sampled token as coming (in `num_tokens`, not yet in
`token_ids`: `Scheduler.commit`), so the next step can be scheduled and packed at once; a sequence
whose last input token is such a token gets it from the launched step's token tensor, here."""
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from nvllm.step import StepPlan


@dataclass
class InFlight:
    """A launched step. `logits`: a tensor (computed asynchronously on CUDA) or, on a CPU, the
    Future of the worker thread computing it; once sampled, the logits only where logprobs are
    asked. Once sampled: `tokens` (a tensor on the device, one per sampled sequence), `rows` (the
    indices in `plan.seqs` of those sequences) and on CUDA `host`, their pinned host copy, and
    `arrived`, the event recorded after it."""
    plan: StepPlan
    logits: torch.Tensor | Future | None = None
    tokens: torch.Tensor | None = None
    rows: list[int] | None = None
    host: torch.Tensor | None = None
    arrived: object = None

    def pending(self, plan: StepPlan, inputs: list[tuple]) -> list[tuple[int, int]]:
        """(index in `plan`, row in `self.tokens`) of each sequence of the next step whose last
        input token is this step's sample: its input list is one short (the token has not arrived);
        a placeholder 0 takes the token's place until it is filled in."""
        pending = []
        for i, (token_ids, n) in enumerate(zip(inputs, plan.num_tokens)):
            if len(token_ids[0]) < n:
                token_ids[0].append(0)
                pending.append(i)
        if not pending:
            return []
        row = {self.plan.seqs[i].seq_id: r for r, i in enumerate(self.rows or ())}
        return [(i, row[plan.seqs[i].seq_id]) for i in pending]


def fill_pending(input_ids: torch.Tensor, inputs: list[tuple], pending: list[tuple[int, int]],
                 tokens: torch.Tensor, to_device: Callable[[list, torch.dtype], torch.Tensor]) -> None:
    """Copy each pending token from `tokens` into its packed row of `input_ids` (the last of its
    sequence's inputs), on the device: no host sync. `to_device` makes index tensors there."""
    ends, end = [], 0
    for token_ids, *_ in inputs:
        end += len(token_ids)
        ends.append(end - 1)
    rows, sources = [ends[i] for i, _ in pending], [r for _, r in pending]
    if rows == sources == list(range(len(tokens))) and len(rows) == len(input_ids):
        input_ids.copy_(tokens)  # a decode step in the order of the one before: a plain copy
    else:
        input_ids[to_device(rows, torch.int64)] = tokens[to_device(sources, torch.int64)]
