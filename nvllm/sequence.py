"""The request as every component family sees it: its tokens, how many are computed, its cache
block table, its sampling parameters and timestamps. Every component imports down to this module;
only the scheduler (and the KV cache allocator it calls) writes a Sequence once intake made it."""
from copy import copy
from enum import Enum, auto
from itertools import count

from nvllm.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    counter = count()

    def __init__(self, token_ids: list[int], sampling_params: SamplingParams, block_size: int, priority: int = 0):
        self.seq_id = next(Sequence.counter)
        self.request_id: str | None = None  # the engine API's name for it
        self.block_size = block_size
        self.status = SequenceStatus.WAITING
        self.token_ids = copy(token_ids)
        # len(token_ids), plus one while a launched step's token is coming (overlap scheduling)
        self.num_tokens = len(token_ids)
        self.num_prompt_tokens = len(token_ids)
        # tokens whose K/V are in the cache (prefix hits count); the model runs the rest
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.sampling_params = sampling_params
        self.priority = priority
        self.finish_reason: str | None = None
        # perf_counter() times: arrival (TTFT counts from it), first step that scheduled it, finish
        self.arrival_time = self.finish_time = 0.0
        self.first_scheduled_time: float | None = None
        # when each generated token came out of the model (one entry per completion token)
        self.token_times: list[float] = []
        self.num_preemptions = 0
        # which of its request's n completions (SamplingParams.n); its siblings share the prompt's blocks
        self.index = 0
        # with SamplingParams.logprobs: per generated token {token id: (logprob, rank)}, and their sum
        self.logprobs: list[dict[int, tuple[float, int]]] | None = None if sampling_params.logprobs is None else []
        self.cumulative_logprob: float | None = None if sampling_params.logprobs is None else 0.0

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def first_token_time(self) -> float:
        return self.token_times[0] if self.token_times else 0.0

    def __len__(self):
        return self.num_tokens

    def __getitem__(self, key):
        return self.token_ids[key]

    @property
    def is_finished(self):
        return self.status == SequenceStatus.FINISHED

    @property
    def num_completion_tokens(self):
        return self.num_tokens - self.num_prompt_tokens

    @property
    def completion_token_ids(self):
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_blocks(self):
        return (self.num_tokens + self.block_size - 1) // self.block_size

    def block(self, i: int) -> list[int]:
        assert 0 <= i < self.num_blocks
        return self.token_ids[i * self.block_size : (i + 1) * self.block_size]

    def append_token(self, token_id: int):
        """Add a generated token (what the scheduler's update does; tests and suites drive sequences by hand)."""
        self.token_ids.append(token_id)
        self.num_tokens += 1
