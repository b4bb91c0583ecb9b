"""Chunked prefill mixed with decode (vLLM's default policy; nano-vllm never mixes them). Each step
spends a token budget (max_num_batched_tokens): first one token for every running sequence that
is decoding, then the next chunk of the prefills already under way, then new requests in arrival
order, whose prompt may be cut to what is left of the budget. A long prompt therefore never stalls
the running decodes for a whole step, and the budget may be smaller than max_model_len.

Blocks for the whole prompt are still taken at admission, so a chunk never waits for cache space;
when a decode cannot get a block, the newest running sequence is preempted (recompute), as fcfs."""
from collections import deque
from dataclasses import dataclass

from nvllm.sequence import Sequence, SequenceStatus
from nvllm.hookspecs import hookimpl
from nvllm.scheduler.base import Scheduler


class ChunkedScheduler(Scheduler):
    name = "chunked"
    # the engine may run it with max_num_batched_tokens < max_model_len: a recompute is chunked too
    chunked_prefill = True

    @dataclass
    class Config:
        name: str = "chunked"
        # most prompt tokens one sequence computes per step; 0: only the step's budget limits a chunk
        max_chunk: int = 0

        def __post_init__(self):
            assert self.max_chunk >= 0, "scheduler.max_chunk must be >= 0"

    def schedule(self) -> list[Sequence]:
        scheduled, budget = [], self.max_num_batched_tokens
        admitted = {id(s): i for i, s in enumerate(self.running)}  # running is in admission order
        # decodes before prefill chunks: a decode costs one token and holds a user waiting
        pending = deque(sorted(self.running, key=lambda s: len(s) - s.num_computed_tokens > 1))
        while pending and budget and len(scheduled) < self.max_num_seqs:
            seq = pending.popleft()
            while not self.kv_cache.can_append(seq):
                # the newest admitted of those not yet in this step gives up its blocks, else seq itself
                victim = max(pending, key=lambda s: admitted[id(s)], default=seq)
                if victim is not seq:
                    pending.remove(victim)
                self.running.remove(victim)
                self.preempt(victim)
                if victim is seq:
                    break
            else:
                self.kv_cache.may_append(seq)
                self._take(seq, budget)
                budget -= seq.num_scheduled_tokens
                scheduled.append(seq)

        while self.waiting and budget and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.kv_cache.can_allocate(seq):
                break
            self.kv_cache.allocate(seq)
            self._take(seq, budget)
            budget -= seq.num_scheduled_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
        return scheduled

    def _take(self, seq: Sequence, budget: int):
        left = len(seq) - seq.num_computed_tokens
        if self.config.max_chunk and left > 1:
            left = min(left, self.config.max_chunk)
        seq.num_scheduled_tokens = min(left, budget)


@hookimpl
def register_schedulers(register):
    register(ChunkedScheduler)
