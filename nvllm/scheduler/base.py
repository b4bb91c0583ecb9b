"""The scheduler family: which sequences run in each step, and who is preempted.

The loop is written once, here. A step either admits waiting requests first and, if any were
admitted, runs only their prefills (nano-vllm's prefill-first order), or, with `chunked_prefill`,
continues the running requests first and fills what is left of the token budget with new ones,
whose prompts may be split across steps. A policy says only what differs, by overriding:

- `next_to_admit`: which waiting request is admitted next (default: the head of the queue);
- `skip_blocked`: whether a request that does not fit may be passed over (default: no, it waits
  at the head and nothing behind it is admitted);
- `admission_victim`: a running request to preempt so that a waiting one fits (default: none);
- `running_order`: the order running requests are given the step (default: decodes, then the
  prefill chunks under way, in admission order);
- `victim`: the running request to preempt when one cannot get a block (default: the newest
  admitted); None preempts the request itself.

Preemption is by recompute: the victim's blocks are freed and it rejoins the front of the queue."""
from abc import ABC
from collections import deque

from nvllm.kv_cache.base import KVCacheAllocator
from nvllm.sequence import Sequence, SequenceStatus


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

    # -- policy ------------------------------------------------------------------------------
    def next_to_admit(self, passed: set[int]) -> Sequence | None:
        """The waiting request to admit next; `passed` holds the seq ids skipped this step."""
        return next((seq for seq in self.waiting if seq.seq_id not in passed), None)

    def skip_blocked(self, seq: Sequence) -> bool:
        return False

    def admission_victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        return None

    def running_order(self) -> list[Sequence]:
        return sorted(self.running, key=lambda s: len(s) - s.num_computed_tokens > 1)

    def victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        """`candidates`: running requests not yet given this step, in admission order."""
        return candidates[-1] if candidates else None

    def chunk(self, seq: Sequence, budget: int) -> int:
        """Tokens `seq` computes this step out of `budget`."""
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
        for seq in self.running_order():
            if not budget or len(scheduled) >= self.max_num_seqs:
                break
            if seq.status != SequenceStatus.RUNNING:
                continue  # preempted earlier in this step
            while not self.kv_cache.can_append(seq):
                victim = self.victim(seq, self._unscheduled(seq)) or seq
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.kv_cache.may_append(seq)
                seq.num_scheduled_tokens = self.chunk(seq, budget)
                budget -= seq.num_scheduled_tokens
                scheduled.append(seq)
        return budget

    def _unscheduled(self, seq: Sequence) -> list[Sequence]:
        return [s for s in self.running if s is not seq and not s.num_scheduled_tokens]

    def preempt(self, seq: Sequence):
        """Recompute-style preemption: drop the cache, requeue at the front."""
        self.num_preemptions += 1
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        self.kv_cache.deallocate(seq)
        self.waiting.appendleft(seq)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int]) -> list[Sequence]:
        """Account the step, append sampled tokens, finish sequences; return the finished."""
        finished = []
        for seq, token_id in zip(seqs, token_ids):
            seq.num_computed_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = 0
            self.kv_cache.on_computed(seq)
            if seq.num_computed_tokens < len(seq):
                continue  # a prefill chunk: its sampled token is not the next one
            seq.append_token(token_id)
            sp = seq.sampling_params
            if not sp.ignore_eos and token_id in self.eos_token_ids:
                seq.finish_reason = "stop"
            elif seq.num_completion_tokens >= sp.max_tokens or len(seq) >= self.max_model_len:
                seq.finish_reason = "length"
            else:
                continue
            seq.status = SequenceStatus.FINISHED
            self.kv_cache.deallocate(seq)
            self.running.remove(seq)
            finished.append(seq)
        return finished
