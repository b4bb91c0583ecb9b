"""Verification of drafted tokens: which of them the target model accepts, and one token of its own.

A verify step scored every drafted token: sequence b's logits rows are its last token's, then one
per draft. Row j is the target's distribution for the token after the history and the first j
drafts. Verification walks the rows in order and draws each row's token with the run's own
sampler, exactly as a step without speculation would (temperature, top-k, top-p, penalties, the
request's seeded generator); it stops at the first row whose token differs from the draft there,
or after the row past the last draft:

- at temperature 0 that is the greedy rule: the longest prefix of drafts the target's argmax
  agrees with, then the target's own next token;
- at temperature > 0 it is Leviathan et al.'s rejection sampling for a draft distribution q that
  is one-hot (a deterministic proposal: every built-in drafter's): accepting the draft x with
  probability min(1, p(x)/q(x)) = p(x) and otherwise drawing from normalise(max(0, p - q)) = p
  without x is the same as drawing y ~ p and accepting x when y == x, emitting y otherwise. Every
  token emitted is a draw from p given the tokens before it, so the output distribution is the
  target's whatever was drafted.

Because each row draws once, in order, and drawing stops where the step's tokens end, a seeded
request's generator advances exactly as without speculation: its tokens do not change either."""
from copy import copy

import torch

from nvllm.sampler.base import as_list
from nvllm.sampler.logprobs import logprob_entries
from nvllm.sequence import Sequence
from nvllm.step import StepPlan, StepResult


def with_history(seq: Sequence, extra: list[int]) -> Sequence:
    """`seq` as the sampler should see it for a later row: its tokens followed by `extra` (a
    shallow copy; the sequence itself is unchanged, and its seq_id, which samplers key state on, kept)."""
    if not extra:
        return seq
    view = copy(seq)
    view.token_ids = seq.token_ids + extra
    view.num_tokens = len(view.token_ids)
    return view


def verify(sampler, logits: torch.Tensor, plan: StepPlan) -> StepResult:
    """Each sequence's run (its accepted drafts, then the target's next token), or None for a
    prefill chunk (no token this step), and their logprobs where asked. `logits` holds
    1 + len(plan.drafts[b]) rows per sequence."""
    seqs, drafts = plan.seqs, plan.drafts
    first_row, row = [], 0
    for d in drafts:
        first_row.append(row)
        row += 1 + len(d)
    live = [b for b, samples in enumerate(plan.samples) if samples]
    runs: list = [None] * len(seqs)
    logprobs = [[] if seqs[b].logprobs is not None else None for b in range(len(seqs))]
    for b in live:
        runs[b] = []
    if all(seqs[b].sampling_params.temperature == 0 for b in live):
        return _verify_greedy(sampler, logits, seqs, drafts, first_row, live, runs, logprobs)
    j = 0
    while live:
        views = [with_history(seqs[b], runs[b]) for b in live]
        rows = logits[[first_row[b] + j for b in live]]
        sampled = as_list(sampler(rows, views))
        # logprobs (SamplingParams.logprobs) of each token drawn, from the row's raw logits
        entries = logprob_entries(rows, [seqs[b] for b in live], range(len(live)), sampled)
        still = []
        for k, (b, token_id) in enumerate(zip(live, sampled)):
            runs[b].append(token_id)
            if k in entries:
                logprobs[b].append(entries[k])
            if j < len(drafts[b]) and token_id == drafts[b][j]:
                still.append(b)
        live, j = still, j + 1
    return StepResult(runs, logprobs if any(lp is not None for lp in logprobs) else None)


def _verify_greedy(sampler, logits, seqs, drafts, first_row, live, runs, logprobs) -> StepResult:
    """`verify` when every row is greedy: a row's token then depends only on its logits and the
    tokens before it, and drawing it draws no noise, so every row is drawn in one call, row j with
    the first j drafts as its history, and the walk keeps each sequence's rows up to its first
    disagreement (the same tokens as drawing them in turn, for one sampler call a step, not one a row)."""
    rows, views, owners = [], [], []
    for b in live:
        for j in range(len(drafts[b]) + 1):
            rows.append(first_row[b] + j)
            views.append(with_history(seqs[b], drafts[b][:j]))
            owners.append(b)
    scored = logits if len(rows) == len(logits) else logits[rows]
    sampled = as_list(sampler(scored, views))
    kept = []
    for i, (b, token_id) in enumerate(zip(owners, sampled)):
        run = runs[b]
        if run and run[-1] != drafts[b][len(run) - 1]:
            continue  # past this sequence's first disagreement
        run.append(token_id)
        kept.append(i)
    entries = logprob_entries(scored, [seqs[b] for b in owners], kept, sampled)
    for i in kept:
        if i in entries:
            logprobs[owners[i]].append(entries[i])
    return StepResult(runs, logprobs if any(lp is not None for lp in logprobs) else None)
