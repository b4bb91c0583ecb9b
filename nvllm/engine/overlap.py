"""What overlap scheduling (async_scheduling) adds to a step: the launched step the engine keeps
while it schedules the next one, and the input tokens of that next one that are still PENDING (the
launched step's samples, not yet on the host), filled in on the device from its token tensor."""
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from nvllm.sequence import PENDING, Sequence

@dataclass
class Step:
    """A launched step. `logits`: a tensor (computed asynchronously on CUDA) or, on a CPU with
    async_scheduling, the Future of the worker thread computing it. Once sampled: `tokens` (one per
    sampled sequence: a tensor on the device from a sampler that can, else a list), `rows` (the
    indices in `seqs` of those sequences; None: all) and on CUDA `host`, their pinned host copy,
    and `arrived`, the event recorded after it."""
    seqs: list[Sequence]
    num_tokens: int
    is_decode: bool
    logits: torch.Tensor | Future | None = None
    tokens: torch.Tensor | list[int] | None = None
    rows: list[int] | None = None
    host: torch.Tensor | None = None
    arrived: object = None
    launched: float = 0.0  # the engine's clock
    verify: bool = False  # speculative decoding: some sequences ran drafts, which sample verifies


def pending_inputs(seqs: list[Sequence], inputs: list[tuple], in_flight: Step) -> list[tuple[int, int]]:
    """(index in `seqs`, row in `in_flight.tokens`) of each sequence whose last input token is still
    PENDING: a sample of `in_flight` (a sequence has at most one, its last token). `inputs`: the
    model runner's StepInputs for `seqs`."""
    pending = [i for i, (token_ids, *_) in enumerate(inputs) if token_ids[-1] == PENDING]
    if not pending:
        return []
    sampled = in_flight.seqs if in_flight.rows is None else [in_flight.seqs[i] for i in in_flight.rows]
    row = {seq.seq_id: r for r, seq in enumerate(sampled)}
    return [(i, row[seqs[i].seq_id]) for i in pending]


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
