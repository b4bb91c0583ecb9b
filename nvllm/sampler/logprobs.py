"""Logprobs (SamplingParams.logprobs), as vLLM returns them by default: from the model's raw
logits, before penalties, temperature or top-k/top-p, whichever sampler ran. Each sequence that
asks gets, per sampled token, {token id: (logprob, rank)} for the sampled token and its
`logprobs` most likely ones; one log_softmax and one topk for the rows that ask."""
import torch

from nvllm.sequence import Sequence


def logprob_entries(logits: torch.Tensor, seqs: list[Sequence], rows: list[int], token_ids: list[int]) -> dict:
    """{b: entry of the token sampled at row b} for each b in `rows` whose sequence (`seqs[b]`)
    asked for logprobs (`token_ids`: one per row of `logits`)."""
    rows = [b for b in rows if seqs[b].logprobs is not None]
    if not rows:
        return {}
    logprobs = logits[rows].float().log_softmax(dim=-1)
    sampled = torch.tensor([token_ids[b] for b in rows], device=logprobs.device)
    chosen = logprobs.gather(1, sampled[:, None])
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    k = max(seqs[b].sampling_params.logprobs for b in rows)
    top = logprobs.topk(k, dim=-1) if k else None
    chosen, ranks = chosen[:, 0].tolist(), ranks.tolist()
    top_values, top_ids = (top.values.tolist(), top.indices.tolist()) if top is not None else ([[]] * len(rows),) * 2
    entries = {}
    for i, b in enumerate(rows):
        entry = {token_ids[b]: (chosen[i], ranks[i])}
        for rank, (t, lp) in enumerate(zip(top_ids[i][:seqs[b].sampling_params.logprobs], top_values[i]), 1):
            entry.setdefault(t, (lp, rank))
        entries[b] = entry
    return entries


def logprobs_of(logits: torch.Tensor, seqs: list[Sequence], token_ids: list[int]) -> list | None:
    """A StepResult's logprobs for one token per row (row b: `seqs[b]`): [entry] where the sequence
    asked, else None (call it when some row asked)."""
    entries = logprob_entries(logits, seqs, range(len(seqs)), token_ids)
    return [[entries[b]] if b in entries else None for b in range(len(seqs))]
