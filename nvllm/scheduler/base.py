"""The scheduler family: which sequences run in each step, who is preempted (by recompute), and
what a step's result does to them. The scheduler is the one writer of a Sequence's state.

The loop is written once, here: prefill-first (nano-vllm: a step that admits runs only prefills)
or, with `chunked_prefill`, running requests first and new prompts, split if need be, in what is
left of the token budget. A policy overrides only what differs: `next_to_admit`, `skip_blocked`,
`admission_victim`, `running_order`, `victim`, `chunk` (docs/plugins.md).

A step (nvllm/step.py): `schedule(lookahead)` returns a StepPlan; once it has run, `update(plan,
result, now)` counts its tokens as computed, enters full blocks in the prefix cache, appends each
sampled token or verified run, finishes what stops (EOS, a stop token, max_tokens, max_model_len)
and frees its blocks, and returns a StepUpdate. Overlap scheduling calls `commit(plan)` at launch
(the tokens computed, the coming token counted in `num_tokens` but not yet in `token_ids`, a length
limit applied) and `update` a step later, when the token arrives. A stop string, found by the
output layer, ends a sequence through `stop`."""
from abc import ABC
from collections import deque

from nvllm.kv_cache.base import KVCacheAllocator
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.step import StepPlan, StepResult, StepUpdate

RUNNING = SequenceStatus.RUNNING


class Scheduler(ABC):
    name: str
    # prompts may be split across steps (the engine then allows max_num_batched_tokens < max_model_len)
    chunked_prefill: bool = False

    def __init__(self, config, kv_cache: KVCacheAllocator, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, eos_token_ids: frozenset[int]):
        self.config = config
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    # -- policy: the defaults are fcfs ------------------------------------------------------------
    def next_to_admit(self, passed: set[int]) -> Sequence | None:  # passed: seq ids skipped this step
        return next((seq for seq in self.waiting if seq.seq_id not in passed), None)

    def skip_blocked(self, seq: Sequence) -> bool:  # False: a request that does not fit blocks the queue
        return False

    def admission_victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        return None

    def running_order(self) -> list[Sequence]:  # decodes, then prefill chunks under way
        decodes = [s for s in self.running if s.num_tokens - s.num_computed_tokens <= 1]
        if len(decodes) == len(self.running):
            return decodes
        return decodes + [s for s in self.running if s.num_tokens - s.num_computed_tokens > 1]

    def victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        return candidates[-1] if candidates else None  # the newest admitted; None: seq itself

    def chunk(self, seq: Sequence, budget: int) -> int:
        return min(len(seq) - seq.num_computed_tokens, budget)

    # -- the loop ------------------------------------------------------------------------------
    def schedule(self, lookahead: int = 0) -> StepPlan:
        """This step's plan. `lookahead`: the most cache slots a decoding sequence may reserve past
        its last token for drafts (speculative decoding; 0: none)."""
        plan, budget = StepPlan([], [], [], True), self.max_num_batched_tokens
        if not self.chunked_prefill and self.waiting:
            budget = self._admit(plan, budget)
            if plan.seqs:
                return plan
        budget = self._continue(plan, budget)
        if lookahead:
            budget = self._reserve_lookahead(plan, budget, lookahead)
        if self.chunked_prefill and self.waiting:
            self._admit(plan, budget)
        return plan

    def _add(self, plan: StepPlan, seq: Sequence, tokens: int):
        plan.seqs.append(seq)
        plan.num_tokens.append(tokens)
        plan.samples.append(seq.num_computed_tokens + tokens >= seq.num_tokens)
        if plan.lookahead is not None:
            plan.lookahead.append(0)

    def _admit(self, plan: StepPlan, budget: int) -> int:
        passed = set()
        while budget and len(self.running if self.chunked_prefill else plan.seqs) < self.max_num_seqs:
            seq = self.next_to_admit(passed)
            if seq is None:
                break
            fits = self.chunked_prefill or len(seq) <= budget  # prefill-first: the whole prompt in this step
            while fits and not self.kv_cache.can_allocate(seq):
                victim = self.admission_victim(seq, self._unscheduled(seq, plan))
                if victim is None:
                    fits = False
                else:
                    self.preempt(victim)
            if not fits:
                if self.skip_blocked(seq):
                    passed.add(seq.seq_id)
                    continue
                break
            self.kv_cache.allocate(seq)
            tokens = self.chunk(seq, budget)
            budget -= tokens
            seq.status = RUNNING
            self.waiting.remove(seq)
            self.running.append(seq)
            self._add(plan, seq, tokens)
            plan.is_decode = False
        return budget

    def _continue(self, plan: StepPlan, budget: int) -> int:
        seqs, num_tokens, samples, max_num_seqs = plan.seqs, plan.num_tokens, plan.samples, self.max_num_seqs
        for seq in self.running_order():
            if not budget or len(seqs) >= max_num_seqs:
                break
            if seq.status is not RUNNING:
                continue  # preempted earlier in this step
            if len(seq.block_table) * seq.block_size < seq.num_tokens and not self._make_room(seq, plan):
                continue  # it was preempted itself
            if seq.num_tokens - seq.num_computed_tokens == 1:  # a decode runs its token and samples
                seqs.append(seq)
                num_tokens.append(1)
                samples.append(True)
                budget -= 1
            else:
                tokens = self.chunk(seq, budget)
                self._add(plan, seq, tokens)
                plan.is_decode = False
                budget -= tokens
        return budget

    def _make_room(self, seq: Sequence, plan: StepPlan) -> bool:
        """Give `seq` the blocks its tokens need, preempting others (or, failing that, itself)."""
        while not self.kv_cache.can_append(seq):
            victim = self.victim(seq, self._unscheduled(seq, plan)) or seq
            self.preempt(victim)
            if victim is seq:
                return False
        self.kv_cache.may_append(seq)
        return True

    def _reserve_lookahead(self, plan: StepPlan, budget: int, lookahead: int) -> int:
        """Slots for drafted tokens, out of what the step's token budget and the free blocks have
        left once every running sequence has its token: a draft never preempts anyone, it is cut
        (to none if need be). Only a decoding sequence drafts, and never past its max_tokens or
        max_model_len (the step also appends one token of its own)."""
        plan.lookahead = slots = [0] * len(plan.seqs)
        for i, (seq, tokens) in enumerate(zip(plan.seqs, plan.num_tokens)):
            if not budget:
                break
            if tokens != 1 or seq.num_tokens - seq.num_computed_tokens != 1:
                continue
            n = min(lookahead, budget, seq.sampling_params.max_tokens - seq.num_completion_tokens - 1,
                    self.max_model_len - len(seq) - 1)
            while n > 0 and not self.kv_cache.can_append(seq, n):
                n -= 1
            if n > 0:
                self.kv_cache.may_append(seq, n)
                slots[i] = n
                budget -= n
        return budget

    def _unscheduled(self, seq: Sequence, plan: StepPlan) -> list[Sequence]:
        """Running, not in this step's plan yet, in admission order: who may be preempted for `seq`."""
        planned = {s.seq_id for s in plan.seqs}
        return [s for s in self.running if s is not seq and s.seq_id not in planned]

    def preempt(self, seq: Sequence):
        """Recompute-style preemption: drop the cache, requeue at the front."""
        self.num_preemptions += 1
        self.running.remove(seq)
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.kv_cache.deallocate(seq)
        self.waiting.appendleft(seq)

    # -- a step's result ---------------------------------------------------------------------------
    def update(self, plan: StepPlan, result: StepResult, now: float) -> StepUpdate:
        """`plan` ran and gave `result`: count its tokens as computed (unless `commit` did at
        launch), enter full blocks in the prefix cache, append each sampled token (at time `now`)
        or verified run, and finish what stops: EOS or a stop token ("stop", even for a sequence
        that max_tokens ended at launch), max_tokens ("length"), max_model_len. Returns what changed."""
        updated, num_new, finished, committed, logprobs = [], [], [], plan.committed, result.logprobs
        if not (committed or plan.is_decode):  # (a decode step's sequences were all scheduled before)
            self._first_scheduled(plan)
        for i, (seq, tokens, token) in enumerate(zip(plan.seqs, plan.num_tokens, result.tokens)):
            if not committed:
                seq.num_computed_tokens += tokens
            elif seq.num_tokens == len(seq.token_ids):
                continue  # no token is coming for it: it ended while the step ran
            if token is None:  # a prefill chunk that leaves part of its prompt for the next step
                self.kv_cache.on_computed(seq)
                continue
            if token.__class__ is list:  # a verified run (speculative decoding)
                before = len(seq.token_ids)
                reason = self._append_run(seq, token, plan.lookahead[i], logprobs and logprobs[i], now)
                n = len(seq.token_ids) - before
            else:
                reason, n = self._append(seq, token, logprobs[i][0] if logprobs and logprobs[i] else None, now), 1
                if plan.lookahead and plan.lookahead[i] and not reason:
                    self.kv_cache.rollback(seq)  # it reserved slots for drafts and the drafter gave none
            if reason:  # (one that commit finished at launch has a reason: its length)
                self._ended(seq, reason, now)
                finished.append(seq)
            updated.append(seq)
            num_new.append(n)
        return StepUpdate(updated, num_new, finished)

    def _first_scheduled(self, plan: StepPlan):
        for seq in plan.seqs:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = plan.launched

    def _ended(self, seq: Sequence, reason: str, now: float):
        """`seq`'s last token arrived and ends it with `reason`; one that commit finished at launch
        (overlap: max_tokens) takes "stop" when that token is EOS or a stop token."""
        if seq.status is not SequenceStatus.FINISHED:
            self.finish(seq, reason, now)
        elif reason == "stop":
            seq.finish_reason = "stop"
        seq.finish_time = now

    def _append(self, seq: Sequence, token_id: int, logprob: dict | None, now: float) -> str | None:
        """Add a token the model gave (and enter the blocks the computed tokens fill in the prefix
        cache). Returns why the token ends `seq`, if it does: EOS or a stop token ("stop"), max_tokens
        ("length"), max_model_len."""
        seq.token_ids.append(token_id)
        seq.num_tokens += seq.num_tokens < len(seq.token_ids)  # (overlap already counted it)
        seq.token_times.append(now)
        self.kv_cache.on_computed(seq)  # (a full block's hash covers known tokens only)
        if logprob is not None:
            seq.logprobs.append(logprob)
            seq.cumulative_logprob += logprob[token_id][0]
        sp = seq.sampling_params
        if (not sp.ignore_eos and token_id in self.eos_token_ids) or (sp.stop_token_ids and token_id in sp.stop_token_ids):
            return "stop"
        return self._length_reason(seq)

    def _append_run(self, seq: Sequence, run: list[int], lookahead: int, logprobs: list | None, now: float) -> str | None:
        """`update` for a sequence that drafted: its run is the accepted drafts, then one token of
        the model's own. Tokens are appended until one finishes the sequence (each accepted draft's
        K/V was computed in the step); the cache slots of rejected drafts are rolled back. Returns
        the finish reason, if any."""
        reason = None
        for j, token_id in enumerate(run):
            if j:
                seq.num_computed_tokens += 1  # the token before it: an accepted draft, computed in this step
            reason = self._append(seq, token_id, logprobs[j] if logprobs else None, now)
            if reason:
                break
        if not reason and lookahead:
            self.kv_cache.rollback(seq)
        return reason

    def commit(self, plan: StepPlan) -> None:
        """Overlap scheduling, once `plan` is launched and before its result arrives: its tokens count
        as computed, and each token it samples as coming (in `num_tokens`, not yet in `token_ids`),
        so the next step can be scheduled now. A sequence that reaches max_tokens or max_model_len
        with that token finishes here (no later step schedules it); the token still arrives. One
        that finished meanwhile (EOS in the step before, an abort) is skipped."""
        plan.committed = True
        self._first_scheduled(plan)
        for seq, tokens, samples in zip(plan.seqs, plan.num_tokens, plan.samples):
            if seq.status is not RUNNING:
                continue
            seq.num_computed_tokens += tokens
            self.kv_cache.on_computed(seq)
            if samples:
                seq.num_tokens += 1
                reason = self._length_reason(seq)
                if reason:
                    self.finish(seq, reason)
                    seq.num_tokens += 1  # finish dropped the coming token; it still arrives with the result

    def _length_reason(self, seq: Sequence) -> str | None:
        return ("length" if seq.num_tokens - seq.num_prompt_tokens >= seq.sampling_params.max_tokens
                else "max_model_len" if seq.num_tokens >= self.max_model_len else None)

    def stop(self, seq: Sequence, num_completion_tokens: int, now: float) -> None:
        """A stop string ended `seq` after its first `num_completion_tokens` generated tokens (the
        output layer found it): those after are dropped, as if never generated, and it finishes
        with "stop"."""
        del seq.token_ids[seq.num_prompt_tokens + num_completion_tokens:]
        seq.num_tokens = len(seq.token_ids)
        del seq.token_times[num_completion_tokens:]
        if seq.logprobs is not None and len(seq.logprobs) > num_completion_tokens:
            del seq.logprobs[num_completion_tokens:]
            seq.cumulative_logprob = sum(e[t][0] for e, t in zip(seq.logprobs, seq.completion_token_ids))
        if seq.is_finished:
            seq.finish_reason = "stop"
        else:
            self.finish(seq, "stop", now)

    def finish(self, seq: Sequence, reason: str, now: float | None = None):
        """End `seq` now, running or waiting (a stop condition, an abort): its blocks are freed, and a
        token still coming for it (overlap scheduling) is dropped."""
        seq.finish_reason, seq.status = reason, SequenceStatus.FINISHED
        seq.num_tokens = len(seq.token_ids)
        if now is not None:
            seq.finish_time = now
        self.kv_cache.deallocate(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
