"""The scheduler family: which sequences run in each step, and who is preempted."""
from abc import ABC, abstractmethod
from collections import deque

from nvllm.sequence import Sequence, SequenceStatus
from nvllm.kv_cache.base import KVCacheAllocator


class Scheduler(ABC):
    name: str

    def __init__(self, config, kv_cache: KVCacheAllocator, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, eos_token_ids: frozenset[int]):
        self.config = config
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    @abstractmethod
    def schedule(self) -> list[Sequence]:
        """Pick this step's sequences and set each one's `num_scheduled_tokens`."""

    def preempt(self, seq: Sequence):
        """Recompute-style preemption: drop the cache, requeue at the front."""
        self.num_preemptions += 1
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
