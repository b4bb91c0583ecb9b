"""The scheduler family: which sequences run in each step, and who is preempted (by recompute).

The loop is written once, here: prefill-first (nano-vllm: a step that admits runs only prefills)
or, with `chunked_prefill`, running requests first and new prompts, split if need be, in what is
left of the token budget. A policy overrides only what differs: `next_to_admit`, `skip_blocked`,
`admission_victim`, `running_order`, `victim`, `chunk` (docs/plugins.md).

After a step, `advance` counts its tokens as computed and gives each sequence that sampled a
PENDING token (finishing those that reach their length limit); `settle` puts in the sampled values
and finishes on EOS or a stop token. Without overlap scheduling both run once the step is done
(`postprocess`); with it, `advance` runs as soon as the step is launched, so the next step can be
scheduled while it runs, and `settle` one step later."""
from abc import ABC
from collections import deque

from nvllm.kv_cache.base import KVCacheAllocator
from nvllm.sequence import PENDING, Sequence, SequenceStatus


class Scheduler(ABC):
    name: str
    # prompts may be split across steps (the engine then allows max_num_batched_tokens < max_model_len)
    chunked_prefill: bool = False
    # speculative decoding: most cache slots a decoding sequence may reserve past its last token for
    # drafted tokens (the engine sets it from speculative.num_speculative_tokens; 0: none)
    num_lookahead_tokens: int = 0

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
    def schedule(self) -> list[Sequence]:
        """Pick this step's sequences and set each one's `num_scheduled_tokens`."""
        scheduled, budget = [], self.max_num_batched_tokens
        if not self.chunked_prefill:
            budget = self._admit(scheduled, budget)
            if scheduled:
                return scheduled
        budget = self._continue(scheduled, budget)
        if self.num_lookahead_tokens:
            budget = self._reserve_lookahead(scheduled, budget)
        if self.chunked_prefill:
            self._admit(scheduled, budget)
        return scheduled

    def _admit(self, scheduled: list[Sequence], budget: int) -> int:
        passed = set()
        while budget and len(self.running if self.chunked_prefill else scheduled) < self.max_num_seqs:
            seq = self.next_to_admit(passed)
            if seq is None:
                break
            fits = self.chunked_prefill or len(seq) <= budget  # prefill-first: the whole prompt in this step
            while fits and not self.kv_cache.can_allocate(seq):
                victim = self.admission_victim(seq, self._unscheduled(seq))
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
            seq.num_scheduled_tokens = self.chunk(seq, budget)
            budget -= seq.num_scheduled_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.remove(seq)
            self.running.append(seq)
            scheduled.append(seq)
        return budget

    def _continue(self, scheduled: list[Sequence], budget: int) -> int:
        chunk, running = self.chunk, SequenceStatus.RUNNING
        for seq in self.running_order():
            if not budget or len(scheduled) >= self.max_num_seqs:
                break
            if seq.status is not running:
                continue  # preempted earlier in this step
            if len(seq.block_table) * seq.block_size < seq.num_tokens and not self._make_room(seq):
                continue  # it was preempted itself
            left = seq.num_tokens - seq.num_computed_tokens
            seq.num_scheduled_tokens = tokens = 1 if left == 1 else chunk(seq, budget)  # a decode runs its token
            budget -= tokens
            scheduled.append(seq)
        return budget

    def _make_room(self, seq: Sequence) -> bool:
        """Give `seq` the blocks its tokens need, preempting others (or, failing that, itself)."""
        while not self.kv_cache.can_append(seq):
            victim = self.victim(seq, self._unscheduled(seq)) or seq
            self.preempt(victim)
            if victim is seq:
                return False
        self.kv_cache.may_append(seq)
        return True

    def _reserve_lookahead(self, scheduled: list[Sequence], budget: int) -> int:
        """Slots for drafted tokens, out of what the step's token budget and the free blocks have
        left once every running sequence has its token: a draft never preempts anyone, it is cut
        (to none if need be). Only a sequence with one token left to compute (a decode) drafts, and
        never past its max_tokens or max_model_len (the step also appends one token of its own)."""
        for seq in scheduled:
            if not budget:
                break
            if seq.num_scheduled_tokens != 1 or len(seq) - seq.num_computed_tokens != 1:
                continue
            n = min(self.num_lookahead_tokens, budget, seq.sampling_params.max_tokens - seq.num_completion_tokens - 1,
                    self.max_model_len - len(seq) - 1)
            while n > 0 and not self.kv_cache.can_append(seq, n):
                n -= 1
            if n > 0:
                self.kv_cache.may_append(seq, n)
                seq.num_lookahead_tokens = n
                budget -= n
        return budget

    def _unscheduled(self, seq: Sequence) -> list[Sequence]:  # running, not yet given this step, in admission order
        return [s for s in self.running if s is not seq and not s.num_scheduled_tokens]

    def preempt(self, seq: Sequence):
        """Recompute-style preemption: drop the cache, requeue at the front."""
        self.num_preemptions += 1
        self.running.remove(seq)
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        seq.num_lookahead_tokens, seq.draft_token_ids = 0, []
        self.kv_cache.deallocate(seq)
        self.waiting.appendleft(seq)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> list[Sequence]:
        """A finished step: `advance`, then `settle` with its sampled tokens (one per sequence; a
        prefill chunk's entry is ignored). Returns the sequences it finished."""
        finished = self.advance(seqs)
        return finished + self.settle(seqs, token_ids)

    def advance(self, seqs: list[Sequence]) -> list[Sequence]:
        """A launched step's K/V is (or, before anything reads it, will be) in the cache: count its
        tokens as computed, enter full blocks in the prefix cache, and give each sequence whose
        prompt is complete a PENDING token; one that reaches max_tokens or max_model_len with it
        finishes now (no later step schedules it). A sequence that finished while the step ran (an
        abort, a stop found a step late) is skipped. Returns the sequences it finished."""
        finished = []
        on_computed, max_model_len = self.kv_cache.on_computed, self.max_model_len
        for seq in seqs:
            tokens, seq.num_scheduled_tokens = seq.num_scheduled_tokens, 0
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens += tokens
            on_computed(seq)
            if seq.num_computed_tokens < seq.num_tokens:
                continue  # a prefill chunk: its sample is not the next token
            seq.append_token(PENDING)
            if seq.num_tokens - seq.num_prompt_tokens >= seq.sampling_params.max_tokens:
                self.finish(seq, "length")
            elif seq.num_tokens >= max_model_len:
                self.finish(seq, "max_model_len")
            else:
                continue
            finished.append(seq)
        return finished

    def settle(self, seqs: list[Sequence], token_ids: list[int | list[int]]) -> list[Sequence]:
        """A step's sampled tokens replace the PENDING ones `advance` gave (a sequence whose pending
        token was dropped, or that sampled nothing, is skipped); EOS or a stop token finishes its
        sequence with finish_reason "stop", even one that max_tokens already ended. Returns the
        sequences it finished.

        An entry may be the run a verified draft gave (speculative decoding: its accepted drafted
        tokens, then one of the model's own): the first replaces the PENDING token, the rest are
        appended in order until one finishes the sequence (each accepted draft's K/V was computed in
        the step), and the cache slots of the rejected drafts are rolled back."""
        finished = []
        for seq, sampled in zip(seqs, token_ids):
            if sampled.__class__ is list or seq.num_lookahead_tokens:
                if self._settle_run(seq, sampled if isinstance(sampled, list) else [sampled]):
                    finished.append(seq)
                continue
            if seq.last_token != PENDING:
                continue
            seq.set_pending_token(sampled)
            if self._stop_reason(seq, sampled):
                if seq.is_finished:  # max_tokens had ended it at launch: the stop token says why
                    seq.finish_reason = "stop"
                else:
                    self.finish(seq, "stop")
                    finished.append(seq)
        return finished

    def _settle_run(self, seq: Sequence, run: list[int]) -> bool:
        """`settle` for a sequence that drafted; True when its run finished it."""
        lookahead, drafts = seq.num_lookahead_tokens, seq.draft_token_ids
        seq.draft_token_ids, seq.num_lookahead_tokens = [], 0
        if seq.last_token != PENDING:
            return False
        assert len(run) <= len(drafts) + 1, "a run is the accepted drafts and one token more"
        seq.set_pending_token(run[0])
        reason = self._stop_reason(seq, run[0])
        for token_id in run[1:] if not reason else ():
            seq.num_computed_tokens += 1  # the token before it: an accepted draft, computed in this step
            seq.append_token(token_id)
            reason = self._stop_reason(seq, token_id) or self._length_reason(seq)
            if reason:
                break
        if len(run) > 1:
            self.kv_cache.on_computed(seq)  # a full block's hash covers accepted tokens only
        if reason and seq.is_finished:  # max_tokens had ended it at launch: a stop token says why
            seq.finish_reason = reason
        elif reason:
            self.finish(seq, reason)
            return True
        elif lookahead:
            self.kv_cache.rollback(seq)
        return False

    def _stop_reason(self, seq: Sequence, token_id: int) -> str | None:
        sp = seq.sampling_params
        if (not sp.ignore_eos and token_id in self.eos_token_ids) or (sp.stop_token_ids and token_id in sp.stop_token_ids):
            return "stop"
        return None

    def _length_reason(self, seq: Sequence) -> str | None:
        if seq.num_completion_tokens >= seq.sampling_params.max_tokens:
            return "length"
        if seq.num_tokens >= self.max_model_len:
            return "max_model_len"
        return None

    def finish(self, seq: Sequence, reason: str):
        """End `seq` now, running or waiting (a stop condition, an abort): its blocks are freed."""
        seq.finish_reason = reason
        seq.status = SequenceStatus.FINISHED
        self.kv_cache.deallocate(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
