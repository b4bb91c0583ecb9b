"""Priority: fcfs's prefill-first steps, but waiting requests are admitted in priority order and
the lowest-priority running request is the one preempted. A smaller `priority` value is served
first (vLLM's convention); equal priorities go in arrival order. A waiting request that does not
fit may preempt running requests of strictly lower priority to make room, so an urgent request
never waits behind a long, unimportant one; equals never preempt each other, so nothing thrashes."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.scheduler.base import Scheduler
from nvllm.sequence import Sequence


def rank(seq: Sequence) -> tuple[int, int]:
    return seq.priority, seq.seq_id  # seq ids grow with arrival


class PriorityScheduler(Scheduler):
    name = "priority"

    @dataclass
    class Config:
        name: str = "priority"
        # a waiting request may preempt running ones of lower priority to be admitted
        preempt_for_admission: bool = True

    def next_to_admit(self, passed: set[int]) -> Sequence | None:
        return min(self.waiting, key=rank, default=None)  # strict: nothing jumps a blocked request

    def admission_victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        if not self.config.preempt_for_admission:
            return None
        return max((s for s in candidates if s.priority > seq.priority), key=rank, default=None)

    def running_order(self) -> list[Sequence]:
        return sorted(self.running, key=rank)  # when max_num_seqs cuts the batch, the most urgent run

    def victim(self, seq: Sequence, candidates: list[Sequence]) -> Sequence | None:
        return max((s for s in candidates if rank(s) > rank(seq)), key=rank, default=None)


@hookimpl
def register_schedulers(register):
    register(PriorityScheduler)
