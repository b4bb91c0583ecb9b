"""Request intake: every argument of a request checked against its type, the model and the KV
cache and made into a Sequence before anything is registered (a bad request raises ValueError naming
the field and what to change), vLLM's prompt shapes, and the queue of requests whose arrival time
has not come yet."""
import heapq
import math
from copy import copy
from dataclasses import replace
from numbers import Integral, Real

from nvllm.clock import Clock
from nvllm.errors import short_repr
from nvllm.sampling_params import INT64, SamplingParams
from nvllm.sequence import Sequence

# the furthest ahead of the engine's clock a request may arrive: a week (a longer wait is a mistake,
# and an unbounded one overflows time.sleep)
MAX_WAIT = 7 * 24 * 3600.0
PROMPT_SHAPES = "a string, a list of token ids, {'prompt': str} or {'prompt_token_ids': [int, ...]}"


def eos_ids(tokenizer, hf_config) -> frozenset[int]:
    """The model's end-of-sequence ids: its config's and its tokenizer's."""
    ids = set()
    for source in (getattr(hf_config, "eos_token_id", None), tokenizer and tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    return frozenset(ids)


def prompt_of(prompt) -> str | list[int]:
    """The text or token ids of a prompt in any of vLLM's shapes: a string, a list of token ids, a
    TextPrompt {"prompt": str} or a TokensPrompt {"prompt_token_ids": [...]}."""
    if isinstance(prompt, dict):
        if set(prompt) == {"prompt"} and isinstance(prompt["prompt"], str):
            return prompt["prompt"]
        if set(prompt) == {"prompt_token_ids"} and isinstance(prompt["prompt_token_ids"], (list, tuple)):
            return list(prompt["prompt_token_ids"])
        others = sorted(map(str, set(prompt) - {"prompt", "prompt_token_ids"}))
        raise ValueError(f"prompt must be {PROMPT_SHAPES}"
                         + (f"; nvllm does not take {', '.join(others)}" if others else "") + f", got {short_repr(prompt)}")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        return list(prompt)
    raise ValueError(f"prompt must be {PROMPT_SHAPES}, got {short_repr(prompt)}")


def encode(prompt: str | list[int], tokenizer, model_path: str) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"{model_path} has no tokenizer; pass prompts as lists of token ids")
        return tokenizer.encode(prompt)
    return list(prompt)


# the roles a chat message may have: OpenAI's (and the server's)
CHAT_ROLES = ("system", "user", "assistant", "developer", "tool")


def chat_messages(conversation) -> list[dict]:
    """One conversation as a chat template takes it, whether it came through the server or
    LLM.chat: a list of {"role", "content", ...} dicts, content a string, None, or OpenAI's content
    parts [{"type": "text", "text": ...}] (joined); other keys (name, ...) pass to the template."""
    if not isinstance(conversation, (list, tuple)) or not conversation:
        raise ValueError(f"a conversation is a non-empty list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {short_repr(conversation)}")
    messages = []
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise ValueError(f"message {i} must be a dict whose role is one of {', '.join(CHAT_ROLES)}, "
                             f"got {short_repr(message)}")
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            if not all(isinstance(part, dict) and part.keys() == {"type", "text"} and part["type"] == "text"
                       and isinstance(part["text"], str) for part in content):
                raise ValueError(f"message {i}: content parts must be {{'type': 'text', 'text': str}} (nvllm's models "
                                 f"read text only), got {short_repr(content)}")
            content = "".join(part["text"] for part in content)
        elif content is not None and not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, a list of {{'type': 'text', 'text': str}} "
                             f"parts or None, got {short_repr(content)}")
        messages.append({**message, "content": content or ""})
    return messages


def encode_chat(conversation, tokenizer, model_path: str, add_generation_prompt: bool = True,
                **template_kwargs) -> tuple[str, list[int]]:
    """A conversation (chat_messages) through the model's chat template: the text and its token ids
    (the template writes the special tokens itself, so the tokenizer adds none, as vLLM's chat)."""
    messages = chat_messages(conversation)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{model_path} has no chat template (its tokenizer_config.json sets none); "
                         f"send plain prompts instead")
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **template_kwargs)
    except Exception as e:  # the template refuses the conversation (roles out of order, ...)
        raise ValueError(f"the chat template refuses these messages: {str(e)[:300]}") from None
    return text, tokenizer.encode(text, add_special_tokens=False)


def new_sequence(engine, request_id: str, prompt, params: SamplingParams, arrival_time: float | None = None,
                 priority: int = 0, stream: bool = True) -> Sequence:
    """The Sequence of one request to `engine` (an LLMEngine), registered nowhere, or ValueError
    naming what is wrong: an argument of the wrong type or range, a prompt that is empty, out of the
    vocabulary, too long to generate from or too long ever to fit the whole cache; stop token ids
    out of the vocabulary; stop strings without a tokenizer; what the forward strategy cannot run.
    Its params are a checked copy of `params`: a change to the caller's object never reaches a step."""
    if not isinstance(request_id, str):
        raise ValueError(f"request_id must be a string, got {short_repr(request_id)}")
    prompt = prompt_of(prompt)
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams, got {short_repr(params)}")
    params = copy(params).validate()
    if isinstance(priority, bool) or not isinstance(priority, Integral) or not -INT64 <= priority < INT64:
        raise ValueError(f"priority must be an integer in [-2**63, 2**63) (smaller is served first under "
                         f"scheduler=priority), got {short_repr(priority)}")
    if not isinstance(stream, bool):
        raise ValueError(f"stream must be True or False, got {short_repr(stream)}")
    now = engine.clock.now()
    if arrival_time is None:
        arrival_time = now
    elif isinstance(arrival_time, bool) or not isinstance(arrival_time, Real) or not math.isfinite(arrival_time) \
            or arrival_time > now + MAX_WAIT:
        raise ValueError(f"arrival_time must be a finite time on the engine's clock (engine.clock.now() is {now:.3f}) "
                         f"at most a week ahead, or None for now; got {short_repr(arrival_time)}")
    engine.executor.check_request(prompt, params)
    token_ids = encode(prompt, engine.tokenizer, engine.model_path)
    vocab_size, max_model_len, kv_cache = engine.vocab_size, engine.config.max_model_len, engine.kv_cache
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
    if params.stop and engine.tokenizer is None:
        raise ValueError(f"stop strings need a tokenizer and {engine.model_path} has none; use stop_token_ids")
    final_len = min(len(token_ids) + params.max_tokens, max_model_len)
    blocks_needed = -(-final_len // kv_cache.block_size)
    if blocks_needed > kv_cache.num_blocks:
        raise ValueError(
            f"request needs {blocks_needed} KV blocks ({final_len} tokens) but the whole cache has "
            f"{kv_cache.num_blocks}; raise kv_cache.num_blocks or kv_cache.memory_budget_gb, or lower max_tokens")
    seq = Sequence(token_ids, params, kv_cache.block_size, int(priority))
    seq.request_id = request_id
    seq.arrival_time = float(arrival_time)
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
