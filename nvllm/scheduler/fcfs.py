"""nano-vllm's policy: prefill first, in arrival order; decode otherwise; when a block cannot
be appended, preempt the newest running sequence (recompute). It is the loop in base.py with
every default."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.scheduler.base import Scheduler


class FCFSScheduler(Scheduler):
    name = "fcfs"

    @dataclass
    class Config:
        name: str = "fcfs"


@hookimpl
def register_schedulers(register):
    register(FCFSScheduler)
