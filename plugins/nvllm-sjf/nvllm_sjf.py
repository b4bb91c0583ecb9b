"""Shortest job first: admit the waiting request with the least work left, preempt the running
request with the most. Work left = prompt tokens not yet in the cache + tokens still to generate
(max_tokens is the only length a scheduler knows in advance). A request overtaken `max_skips`
times by later arrivals is admitted next, so long requests never starve."""
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.scheduler.base import Scheduler


class SJFScheduler(Scheduler):
    name = "sjf"

    @dataclass
    class Config:
        name: str = "sjf"
        # times a request may be overtaken by later arrivals before it goes first; 0: no limit (may starve)
        max_skips: int = 64

        def __post_init__(self):
            assert self.max_skips >= 0, "scheduler.max_skips must be >= 0"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.skips: dict[int, int] = {}

    def work_left(self, seq: Sequence) -> int:
        to_generate = min(seq.sampling_params.max_tokens - seq.num_completion_tokens, self.max_model_len - len(seq))
        return len(seq) - seq.num_computed_tokens + to_generate

    def starved(self, seq: Sequence) -> bool:
        return 0 < self.config.max_skips <= self.skips.get(seq.seq_id, 0)

    def schedule(self) -> list[Sequence]:
        scheduled, num_batched_tokens = [], 0
        for seq in sorted(self.waiting, key=lambda s: (not self.starved(s), self.work_left(s), s.seq_id)):
            if len(scheduled) == self.max_num_seqs:
                break
            if num_batched_tokens + len(seq) > self.max_num_batched_tokens or not self.kv_cache.can_allocate(seq):
                if self.starved(seq):
                    break  # hold what is left for it instead of letting shorter jobs take it again
                continue
            self.kv_cache.allocate(seq)
            seq.num_scheduled_tokens = len(seq) - seq.num_computed_tokens
            num_batched_tokens += seq.num_scheduled_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.remove(seq)
            self.running.append(seq)
            scheduled.append(seq)
            self.skips.pop(seq.seq_id, None)
        if scheduled:
            newest = max(s.seq_id for s in scheduled)
            for seq in self.waiting:  # seq ids grow with arrival: a larger one admitted first overtook it
                if seq.seq_id < newest:
                    self.skips[seq.seq_id] = self.skips.get(seq.seq_id, 0) + 1
            return scheduled

        # decode: shortest first, so when max_num_seqs cuts the batch the nearly finished go
        self.running = type(self.running)(sorted(self.running, key=self.work_left))
        while self.running and len(scheduled) < self.max_num_seqs:
            seq = self.running.popleft()
            while not self.kv_cache.can_append(seq):
                victim = max(self.running, key=self.work_left, default=None)
                if victim is None or self.work_left(victim) < self.work_left(seq):
                    self.preempt(seq)
                    break
                self.running.remove(victim)
                self.preempt(victim)
            else:
                self.kv_cache.may_append(seq)
                seq.num_scheduled_tokens = 1
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled


@hookimpl
def register_schedulers(register):
    register(SJFScheduler)
