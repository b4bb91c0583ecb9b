"""Chunked prefill mixed with decode (vLLM's default policy; nano-vllm never mixes them). Each step
spends a token budget (max_num_batched_tokens): first one token for every running sequence that
is decoding, then the next chunk of the prefills already under way, then new requests in arrival
order, whose prompt may be cut to what is left of the budget. A long prompt therefore never stalls
the running decodes for a whole step, and the budget may be smaller than max_model_len.

Blocks for the whole prompt are still taken at admission, so a chunk never waits for cache space;
when a decode cannot get a block, the newest running sequence is preempted (recompute), as fcfs."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.scheduler.base import Scheduler
from nvllm.sequence import Sequence


class ChunkedScheduler(Scheduler):
    name = "chunked"
    chunked_prefill = True

    @dataclass
    class Config:
        name: str = "chunked"
        # most prompt tokens one sequence computes per step; 0: only the step's budget limits a chunk
        max_chunk: int = 0

        def __post_init__(self):
            if self.max_chunk < 0:
                raise ValueError(f"scheduler.max_chunk={self.max_chunk} is not allowed: use 0 (no limit) or more")

    def chunk(self, seq: Sequence, budget: int) -> int:
        left = len(seq) - seq.num_computed_tokens
        if self.config.max_chunk and left > 1:
            left = min(left, self.config.max_chunk)
        return min(left, budget)


@hookimpl
def register_schedulers(register):
    register(ChunkedScheduler)
