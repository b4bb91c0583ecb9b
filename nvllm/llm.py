"""The Python API: `LLM(model=..., **overrides).generate(prompts, sampling_params)` (vLLM's
RequestOutput with `outputs[0].text`), `.chat(messages)` through the chat template, or
`.stream(...)` for the text as it comes; `LLM(...).engine` is the request-level LLMEngine."""
import os
import threading
from collections.abc import Iterator

from nvllm.config import Config, compose, setup
from nvllm.engine.driver import check_idle
from nvllm.engine.llm_engine import LLMEngine
from nvllm.engine.outputs import RequestDelta, RequestOutput
from nvllm.log import configure_default
from nvllm.plugins import check_requested
from nvllm.sampling_params import SamplingParams


class LLM:
    """An engine built from the same config the CLI composes.

    `model` is a config option (`"smollm2"`, `"qwen3"`, ...), a Hugging Face model directory, or a
    Hugging Face repo id (`"Qwen/Qwen3-0.6B"`: its local cache, or a download where the hub is reachable).
    Other keyword arguments are the CLI's overrides as Python values: a string picks a group's
    option (`scheduler="fcfs"`), a dict sets fields of a group (`kv_cache={"prefix_caching": False}`),
    anything else sets a top-level switch (`max_num_seqs=4`). Close it (or use `with`) to free
    the model and KV cache."""

    def __init__(self, model: str = "smollm2", **overrides):
        configure_default()  # the start-up line and warnings reach the terminal unless logging is set up
        setup()
        named = not (isinstance(model, str) and (os.path.isdir(model) or "/" in model))  # not a directory or repo id
        check_requested({**({"model": model} if named else {}), **overrides})
        self.config = compose(model=model, **overrides)
        self.engine = LLMEngine(Config.from_cfg(self.config))
        self.tokenizer = self.engine.tokenizer
        self._busy = threading.Lock()  # one generate/stream at a time drives the engine
        self._busy_with = None

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True, priorities: list[int] | None = None, arrival_times: list[float] | None = None,
                 max_concurrency: int | None = None) -> list[RequestOutput]:
        """Prompts are strings or lists of token ids (a single one is accepted too). Returns one
        output per prompt, in order; a rejected prompt's output carries `error`. `priorities`, one
        int per prompt (smaller is more urgent), is what `scheduler="priority"` orders by.
        `arrival_times` (seconds after the call, one per prompt, non-decreasing) send the requests
        open-loop, TTFT counting from each one's arrival; `max_concurrency` caps those in flight."""
        self._check_open()
        prompts, sampling_params, priorities = _requests(prompts, sampling_params, priorities)
        if arrival_times is not None and len(arrival_times) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(arrival_times)} arrival times")
        self._claim("generate()")
        try:
            return self.engine.generate(prompts, sampling_params, use_tqdm, priorities, arrival_times, max_concurrency)
        finally:
            self._release()

    def stream(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
               priorities: list[int] | None = None) -> Iterator[RequestDelta]:
        """Yield each request's deltas as the engine makes them; request ids are "0", "1", ... in
        prompt order. A rejected prompt yields one finished delta with finish_reason "rejected" and
        `error`. Leaving the loop early (or closing the generator) aborts the requests still running."""
        self._check_open()
        prompts, sampling_params, priorities = _requests(prompts, sampling_params, priorities)
        engine, live = self.engine, []
        self._claim("stream()")
        try:
            check_idle(engine)
            for i, (prompt, sp, priority) in enumerate(zip(prompts, sampling_params, priorities)):
                try:
                    seq = engine.add_request(str(i), prompt, sp, priority=priority)
                except ValueError as e:
                    for k in range(sp.n):
                        yield RequestDelta(str(i), [], "", k == sp.n - 1, "rejected", 0, 0, error=str(e), index=k)
                else:
                    live.append(seq.request_id)
            unfinished = set(live)
            while unfinished:
                for delta in engine.step():
                    if delta.finished:
                        unfinished.discard(delta.request_id)
                    yield delta
        finally:
            engine.abort_requests(live, quiet=True)  # those still running; nobody reads their last delta
            self._release()

    def _claim(self, call: str):
        """One generate/stream at a time: another, from this thread (inside a stream's loop) or from
        another thread, is refused rather than mixing its requests with the running one's."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"this LLM is busy with a {self._busy_with} that has not finished, so {call} cannot "
                               f"run now: finish that stream's loop or call close() on it first (or, from another "
                               f"thread, wait for it), or use a second LLM")
        self._busy_with = call

    def _release(self):
        self._busy_with = None
        self._busy.release()

    def _check_open(self):
        if self.engine is None:
            raise RuntimeError("the engine is closed (close() or the end of its `with` block freed it); "
                               "create a new LLM to generate again")

    def chat(self, messages, sampling_params: SamplingParams | list[SamplingParams] | None = None,
             use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """vLLM's `LLM.chat`: `messages` is one conversation (a list of {"role", "content"} dicts) or
        a list of them; each goes through the model's chat template and is generated from like
        `generate`, one RequestOutput per conversation (its `prompt` is the templated text)."""
        self._check_open()
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.engine.model_path} has no chat template (its tokenizer_config.json sets none); "
                             f"use generate() with plain prompts")
        texts, prompts = [], []
        for conversation in conversations:
            if not isinstance(conversation, list) or not all(isinstance(m, dict) and "role" in m for m in conversation):
                raise ValueError("LLM.chat takes a conversation, a list of {'role': ..., 'content': ...} dicts, or a "
                                 f"list of conversations; got {conversation!r:.120}")
            kwargs = dict(add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {}))
            texts.append(self.tokenizer.apply_chat_template(conversation, tokenize=False, **kwargs))
            prompts.append(self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False, **kwargs))
        outputs = self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        for out, text in zip(outputs, texts):
            out.prompt = text
        return outputs

    def chat_prompt(self, message: str) -> str:
        """`message` as a single user turn through the model's chat template."""
        return self.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                  add_generation_prompt=True)

    def close(self):
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _requests(prompts, sampling_params, priorities):
    """One prompt or a list; one SamplingParams for all or one each; priorities one each."""
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if sampling_params is None:
        sampling_params = SamplingParams()
    if isinstance(sampling_params, SamplingParams):
        sampling_params = [sampling_params] * len(prompts)
    if len(sampling_params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(sampling_params)} sampling params")
    if priorities is not None and len(priorities) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(priorities)} priorities")
    return list(prompts), list(sampling_params), [0] * len(prompts) if priorities is None else list(priorities)
