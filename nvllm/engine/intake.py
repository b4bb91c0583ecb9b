"""Request intake: a prompt and its SamplingParams checked against the model and the KV cache and
made into a Sequence (a bad request raises ValueError saying what to change), and the queue of
requests whose arrival time has not come yet."""
import heapq
import os
from dataclasses import replace

from transformers import AutoTokenizer

from nvllm.clock import Clock
from nvllm.kv_cache.base import KVCacheAllocator
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence


def load_tokenizer(path: str):
    """The model directory's tokenizer, or None where it ships none (prompts are then token ids)."""
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(path)


def eos_ids(tokenizer, hf_config) -> frozenset[int]:
    """The model's end-of-sequence ids: its config's and its tokenizer's."""
    ids = set()
    for source in (getattr(hf_config, "eos_token_id", None), tokenizer and tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    return frozenset(ids)


def encode(prompt: str | list[int], tokenizer, model_path: str) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"{model_path} has no tokenizer; pass prompts as lists of token ids")
        return tokenizer.encode(prompt)
    return list(prompt)


def new_sequence(request_id: str, prompt: str | list[int], params: SamplingParams, priority: int,
                 arrival_time: float, *, tokenizer, model_path: str, vocab_size: int, max_model_len: int,
                 kv_cache: KVCacheAllocator) -> Sequence:
    """The Sequence of one request, or ValueError: a prompt that is empty, out of the vocabulary,
    too long to generate from or too long ever to fit the whole cache; stop token ids out of the
    vocabulary; stop strings without a tokenizer."""
    params.__post_init__()  # checked again: the dataclass is mutable, and a bad value must never reach a step
    token_ids = encode(prompt, tokenizer, model_path)
    if not token_ids:
        raise ValueError("empty prompt: a prompt needs at least one token")
    if len(token_ids) >= max_model_len:  # before the per-token check: a huge prompt is refused at once
        raise ValueError(f"prompt has {len(token_ids)} tokens; max_model_len={max_model_len} leaves no room to "
                         f"generate. Shorten the prompt or raise max_model_len")
    if not all(type(t) is int and 0 <= t < vocab_size for t in token_ids):
        raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")
    if params.stop_token_ids and not all(t < vocab_size for t in params.stop_token_ids):
        raise ValueError(f"stop_token_ids must be below the vocabulary size {vocab_size}, "
                         f"got {max(params.stop_token_ids)} among {len(params.stop_token_ids)}")
    if params.stop and tokenizer is None:
        raise ValueError(f"stop strings need a tokenizer and {model_path} has none; use stop_token_ids")
    final_len = min(len(token_ids) + params.max_tokens, max_model_len)
    blocks_needed = -(-final_len // kv_cache.block_size)
    if blocks_needed > kv_cache.num_blocks:
        raise ValueError(
            f"request needs {blocks_needed} KV blocks ({final_len} tokens) but the whole cache has "
            f"{kv_cache.num_blocks}; raise kv_cache.num_blocks or kv_cache.memory_budget_gb, or lower max_tokens")
    seq = Sequence(token_ids, params, kv_cache.block_size, priority)
    seq.request_id = request_id
    seq.arrival_time = arrival_time
    return seq


def siblings(seq: Sequence) -> list[Sequence]:
    """The other n - 1 completions of `seq`'s request (SamplingParams.n), each a Sequence of the same
    prompt; a seeded request's completion i draws with seed + i (as vLLM), so they differ."""
    params = seq.sampling_params
    out = []
    for i in range(1, params.n):
        # n=1: the request's seed + n - 1 was checked; the sibling's seed is one of those
        sibling = Sequence(seq.token_ids, params if params.seed is None else replace(params, seed=params.seed + i, n=1),
                           seq.block_size, seq.priority)
        sibling.request_id, sibling.arrival_time, sibling.index = seq.request_id, seq.arrival_time, i
        out.append(sibling)
    return out


class Arrivals(list):
    """Requests whose arrival time (on the engine's clock) is still to come, soonest first: a heap
    of (arrival time, seq id, Sequence); empty (false) when none is."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def add(self, seq: Sequence):
        heapq.heappush(self, (seq.arrival_time, seq.seq_id, seq))

    def remove(self, seq: Sequence) -> bool:
        """Take `seq` out; False if it is not here."""
        if not any(s is seq for *_, s in self):
            return False
        self[:] = [a for a in self if a[2] is not seq]
        heapq.heapify(self)
        return True

    def due(self, wait: bool) -> list[Sequence]:
        """Those whose time has come, taken out; `wait`: sleep until the next one is due first."""
        if not self:
            return []
        if wait:
            self.clock.sleep_until(self[0][0])
        now = self.clock.now()
        due = []
        while self and self[0][0] <= now:
            due.append(heapq.heappop(self)[2])
        return due
