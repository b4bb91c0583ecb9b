"""Shortest job first: admit the waiting request with the least work left, preempt the running
request with the most. Work left = prompt tokens not yet in the cache + tokens still to generate
(max_tokens is the only length a scheduler knows in advance). A request overtaken `max_skips`
times by later arrivals is admitted next, so long requests never starve."""
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.scheduler.base import Scheduler
from nvllm.sequence import Sequence
from nvllm.step import StepPlan


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

    def next_to_admit(self, passed: set[int]) -> Sequence | None:
        candidates = (s for s in self.waiting if s.seq_id not in passed)
        return min(candidates, key=lambda s: (not self.starved(s), self.work_left(s), s.seq_id), default=None)

    def skip_blocked(self, seq: Sequence) -> bool:
        return not self.starved(seq)  # a starved request holds what is left instead of letting shorter jobs take it

    def running_order(self) -> list[Sequence]:
        return sorted(self.running, key=self.work_left)  # when max_num_seqs cuts the batch, the nearly finished go

    def victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        victim = max(candidates, key=self.work_left, default=None)
        return victim if victim is not None and self.work_left(victim) >= self.work_left(seq) else None

    def schedule(self, lookahead: int = 0) -> StepPlan:
        waiting = {s.seq_id for s in self.waiting}
        plan = super().schedule(lookahead)
        admitted = [s.seq_id for s in plan.seqs if s.seq_id in waiting]
        for seq_id in admitted:
            self.skips.pop(seq_id, None)
        if admitted:
            newest = max(admitted)
            for seq in self.waiting:  # seq ids grow with arrival: a larger one admitted first overtook it
                if seq.seq_id < newest:
                    self.skips[seq.seq_id] = self.skips.get(seq.seq_id, 0) + 1
        return plan


@hookimpl
def register_schedulers(register):
    register(SJFScheduler)
