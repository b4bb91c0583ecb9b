"""nano-vllm's policy: prefill first, in arrival order; decode otherwise; when a block cannot
be appended, preempt the newest running sequence (recompute)."""
from dataclasses import dataclass

from nvllm.sequence import Sequence, SequenceStatus
from nvllm.hookspecs import hookimpl
from nvllm.scheduler.base import Scheduler


class FCFSScheduler(Scheduler):
    name = "fcfs"

    @dataclass
    class Config:
        name: str = "fcfs"

    def schedule(self) -> list[Sequence]:
        scheduled, num_batched_tokens = [], 0
        while self.waiting and len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            if num_batched_tokens + len(seq) > self.max_num_batched_tokens or not self.kv_cache.can_allocate(seq):
                break
            self.kv_cache.allocate(seq)
            seq.num_scheduled_tokens = len(seq) - seq.num_computed_tokens
            num_batched_tokens += seq.num_scheduled_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
        if scheduled:
            return scheduled

        while self.running and len(scheduled) < min(self.max_num_seqs, self.max_num_batched_tokens):
            seq = self.running.popleft()
            while not self.kv_cache.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.kv_cache.may_append(seq)
                seq.num_scheduled_tokens = 1
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled


@hookimpl
def register_schedulers(register):
    register(FCFSScheduler)
