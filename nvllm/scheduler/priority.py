"""Priority: fcfs's prefill-first steps, but waiting requests are admitted in priority order and
the lowest-priority running request is the one preempted. A smaller `priority` value is served
first (vLLM's convention); equal priorities go in arrival order. A waiting request that does not
fit may preempt running requests of strictly lower priority to make room, so an urgent request
never waits behind a long, unimportant one; equals never preempt each other, so nothing thrashes."""
from dataclasses import dataclass

from nvllm.sequence import Sequence, SequenceStatus
from nvllm.hookspecs import hookimpl
from nvllm.scheduler.base import Scheduler


def rank(seq: Sequence) -> tuple[int, int]:
    return seq.priority, seq.seq_id  # seq ids grow with arrival


class PriorityScheduler(Scheduler):
    name = "priority"

    @dataclass
    class Config:
        name: str = "priority"
        # a waiting request may preempt running ones of lower priority to be admitted
        preempt_for_admission: bool = True

    def schedule(self) -> list[Sequence]:
        scheduled, num_batched_tokens = [], 0
        while self.waiting and len(scheduled) < self.max_num_seqs:
            seq = min(self.waiting, key=rank)  # re-picked each time: a preempted request rejoins the queue
            if num_batched_tokens + len(seq) > self.max_num_batched_tokens:
                break
            while not self.kv_cache.can_allocate(seq) and self._preempt_lowest(below=seq, admitting=True):
                pass
            if not self.kv_cache.can_allocate(seq):
                break  # strict priority: nothing of lower priority jumps ahead of it
            self.kv_cache.allocate(seq)
            seq.num_scheduled_tokens = len(seq) - seq.num_computed_tokens
            num_batched_tokens += seq.num_scheduled_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.remove(seq)
            self.running.append(seq)
            scheduled.append(seq)
        if scheduled:
            return scheduled

        # decode, most urgent first, so that when max_num_seqs or the budget cuts the batch, they run
        self.running = type(self.running)(sorted(self.running, key=rank))
        while self.running and len(scheduled) < min(self.max_num_seqs, self.max_num_batched_tokens):
            seq = self.running.popleft()
            while not self.kv_cache.can_append(seq):
                if not self._preempt_lowest(below=seq):
                    self.preempt(seq)
                    break
            else:
                self.kv_cache.may_append(seq)
                seq.num_scheduled_tokens = 1
                scheduled.append(seq)
        self.running.extendleft(reversed(scheduled))
        return scheduled

    def _preempt_lowest(self, below: Sequence, admitting: bool = False) -> bool:
        """Preempt the lowest-ranked running request that ranks after `below` (and, when admitting,
        has strictly lower priority). Returns whether one was preempted."""
        if admitting and not self.config.preempt_for_admission:
            return False
        candidates = [s for s in self.running if rank(s) > rank(below) and s.num_scheduled_tokens == 0]
        if admitting:
            candidates = [s for s in candidates if s.priority > below.priority]
        if not candidates:
            return False
        victim = max(candidates, key=rank)
        self.running.remove(victim)
        self.preempt(victim)
        return True


@hookimpl
def register_schedulers(register):
    register(PriorityScheduler)
