"""The Python API: `LLM(model=..., **overrides).generate(prompts, sampling_params)` (vLLM's
RequestOutput with `outputs[0].text`), `.chat(messages)` through the chat template, or
`.stream(...)` for the text as it comes; `LLM(...).engine` is the request-level LLMEngine. Every
argument of a call is checked before any of its requests is added: a bad one raises ValueError
naming the prompt's index and the field, and nothing runs (vLLM's behaviour)."""
import difflib
import math
import os
import threading
from collections.abc import Iterator
from numbers import Integral, Real

from nvllm import registry
from nvllm.config import Config, check_requested, compose, group_options, prepare, setup
from nvllm.engine import intake
from nvllm.engine.driver import check_idle
from nvllm.engine.llm_engine import LLMEngine
from nvllm.engine.outputs import RequestDelta, RequestOutput
from nvllm.errors import ConfigError, short_repr
from nvllm.log import configure_default
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence
from nvllm.vllm_args import GENERATE_ARGS, LLM_ARGS, check, refuse_unknown


class LLM:
    """An engine built from the same config the CLI composes.

    `model` is a config option (`"smollm2"`, `"qwen3"`, ...), a Hugging Face model directory, or a
    Hugging Face repo id (`"Qwen/Qwen3-0.6B"`: its local cache, or a download where the hub is reachable;
    `"HuggingFaceTB/SmolLM2-135M-Instruct"` is the embedded SmolLM2, on disk).
    Other keyword arguments are the CLI's overrides as Python values: a string picks a group's
    option (`scheduler="fcfs"`), a dict sets fields of a group (`kv_cache={"prefix_caching": False}`),
    anything else sets a top-level switch (`max_num_seqs=4`). Close it (or use `with`) to free
    the model and KV cache."""

    def __init__(self, model: str = "smollm2", **overrides):
        configure_default()  # the start-up line and warnings reach the terminal unless logging is set up
        setup()
        check("LLM", [key for key in overrides if key in LLM_ARGS], (), LLM_ARGS)
        named = not (isinstance(model, str) and (os.path.isdir(model) or "/" in model))  # not a directory or repo id
        choices = {**({"model": model} if named else {}), **overrides}
        check_requested(choices)
        _check_options(choices)
        self.config = compose(model=model, **overrides)
        self.engine = LLMEngine(prepare(Config.from_cfg(self.config)))  # every auto, the checkpoint read once
        self.tokenizer = self.engine.tokenizer
        self._busy = threading.Lock()  # one generate/stream at a time drives the engine
        self._busy_with = None

    def get_tokenizer(self):
        """The model's tokenizer (transformers'), or None for a model directory that ships none."""
        return self.tokenizer

    @refuse_unknown(GENERATE_ARGS)
    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True, priorities: list[int] | None = None, arrival_times: list[float] | None = None,
                 max_concurrency: int | None = None) -> list[RequestOutput]:
        """Prompts in any of vLLM's shapes (a string, a list of token ids, {"prompt": str},
        {"prompt_token_ids": [...]}; one, or a list of them). Returns one output per prompt, in
        order. `priorities`, one int per prompt (smaller is more urgent), is what
        `scheduler="priority"` orders by. `arrival_times` (seconds after the call, one per prompt)
        send the requests open-loop, TTFT counting from each one's arrival; `max_concurrency` caps
        those in flight. Every argument is checked first: a bad one raises ValueError and nothing runs."""
        self._check_open()
        _flag("use_tqdm", use_tqdm)
        texts, seqs = self._check(prompts, sampling_params, priorities)
        arrival_times = _arrival_times(arrival_times, len(seqs))
        if max_concurrency is not None and (isinstance(max_concurrency, bool) or not isinstance(max_concurrency, Integral)
                                            or max_concurrency < 1):
            raise ValueError(f"max_concurrency must be an integer >= 1 or None, got {short_repr(max_concurrency)}")
        self._claim("generate()")
        try:
            outputs = self.engine.generate([s.token_ids for s in seqs], [s.sampling_params for s in seqs], use_tqdm,
                                           [s.priority for s in seqs], arrival_times, max_concurrency)
        finally:
            self._release()
        for out, text in zip(outputs, texts):
            out.prompt = text
        return outputs

    @refuse_unknown(GENERATE_ARGS)
    def stream(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
               priorities: list[int] | None = None) -> Iterator[RequestDelta]:
        """Yield each request's deltas as the engine makes them; request ids are "0", "1", ... in
        prompt order. Every argument is checked here, before the first delta: a bad one raises
        ValueError. Leaving the loop early (or closing the generator) aborts the requests still running."""
        self._check_open()
        return self._stream(self._check(prompts, sampling_params, priorities)[1])

    def _stream(self, seqs: list[Sequence]) -> Iterator[RequestDelta]:
        engine, live = self.engine, []
        self._claim("stream()")
        try:
            check_idle(engine)
            for i, seq in enumerate(seqs):
                engine.add_request(str(i), seq.token_ids, seq.sampling_params, priority=seq.priority)
                live.append(str(i))
            unfinished = set(live)
            while unfinished:
                for delta in engine.step():
                    if delta.finished:
                        unfinished.discard(delta.request_id)
                    yield delta
        finally:
            engine.abort_requests(live, quiet=True)  # those still running; nobody reads their last delta
            self._release()

    def _check(self, prompts, sampling_params, priorities) -> tuple[list[str | None], list[Sequence]]:
        """Each prompt's text (None for token ids) and its checked Sequence, registered nowhere; the
        first bad argument raises ValueError naming the prompt's index."""
        prompts = _prompt_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if not isinstance(sampling_params, (list, tuple)) or len(sampling_params) != len(prompts):
            raise ValueError(f"sampling_params must be a SamplingParams or a list of them, one per prompt "
                             f"({len(prompts)}), got {short_repr(sampling_params)}")
        if priorities is None:
            priorities = [0] * len(prompts)
        if not isinstance(priorities, (list, tuple)) or len(priorities) != len(prompts):
            raise ValueError(f"priorities must be a list of integers, one per prompt ({len(prompts)}), "
                             f"got {short_repr(priorities)}")
        texts, seqs = [], []
        for i, (prompt, params, priority) in enumerate(zip(prompts, sampling_params, priorities)):
            try:
                prompt = intake.prompt_of(prompt)
                seqs.append(intake.new_sequence(self.engine, str(i), prompt, params, None, priority, False))
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
            texts.append(prompt if isinstance(prompt, str) else None)
        return texts, seqs

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

    @refuse_unknown(GENERATE_ARGS)
    def chat(self, messages, sampling_params: SamplingParams | list[SamplingParams] | None = None,
             use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """vLLM's `LLM.chat`: `messages` is one conversation (a list of {"role", "content"} dicts;
        content a string or a list of {"type": "text", "text": ...} parts, as the server takes) or a
        list of them; each goes through the model's chat template (the server's conversion) and is
        generated from like `generate`, one RequestOutput per conversation (its `prompt` is the
        templated text). Every conversation is checked first: a bad one raises ValueError naming it."""
        self._check_open()
        _flag("add_generation_prompt", add_generation_prompt)
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
            raise ValueError(f"chat_template_kwargs must be a dict or None, got {short_repr(chat_template_kwargs)}")
        one = isinstance(messages, (list, tuple)) and bool(messages) and isinstance(messages[0], dict)
        conversations = [messages] if one else messages
        if not isinstance(conversations, (list, tuple)) or not all(isinstance(c, (list, tuple)) for c in conversations):
            raise ValueError("LLM.chat takes a conversation, a list of {'role': ..., 'content': ...} dicts, or a "
                             f"list of conversations; got {short_repr(messages)}")
        texts, prompts = [], []
        for i, conversation in enumerate(conversations):
            try:
                text, token_ids = intake.encode_chat(conversation, self.tokenizer, self.engine.model_path,
                                                     add_generation_prompt, **(chat_template_kwargs or {}))
            except ValueError as e:
                raise ValueError(f"conversation {i}: {e}") from None
            texts.append(text)
            prompts.append(token_ids)
        outputs = self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        for out, text in zip(outputs, texts):
            out.prompt = text
        return outputs

    def chat_prompt(self, message: str) -> str:
        """`message` as a single user turn through the model's chat template."""
        return intake.encode_chat([{"role": "user", "content": message}], self.tokenizer, self.engine.model_path)[0]

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


def _prompt_list(prompts) -> list:
    """One prompt (a string, a list of token ids, a prompt dict) or a list of them, as a list."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if prompts and all(isinstance(t, Integral) for t in prompts):
            return [list(prompts)]  # one prompt of token ids
        return list(prompts)
    raise ValueError(f"prompts must be {intake.PROMPT_SHAPES}, or a list of them; got {short_repr(prompts)}")


def _arrival_times(arrival_times, n: int) -> list[float] | None:
    if arrival_times is None:
        return None
    if not isinstance(arrival_times, (list, tuple)) or len(arrival_times) != n:
        raise ValueError(f"arrival_times must be a list of seconds after the call, one per prompt ({n}), "
                         f"got {short_repr(arrival_times)}")
    for i, t in enumerate(arrival_times):
        if isinstance(t, bool) or not isinstance(t, Real) or not (math.isfinite(t) and 0 <= t <= intake.MAX_WAIT):
            raise ValueError(f"prompt {i}: arrival_times[{i}] must be a number of seconds after the call in "
                             f"[0, {intake.MAX_WAIT:.0f}] (a week), got {short_repr(t)}")
    return [float(t) for t in arrival_times]


def _flag(name: str, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {short_repr(value)}")


def _check_options(choices: dict):
    """A group's option that does not exist, in one line (not Hydra's listing and traceback): the
    model's says it is neither a directory, an option nor a repo id, and each the nearest name."""
    for group, value in choices.items():
        if group not in registry.FAMILIES or not isinstance(value, str):
            continue
        options = group_options(group)
        if value in options:
            continue
        near = [o for o in options if o.lower() == value.lower()] or difflib.get_close_matches(value, options, n=1)
        what = ("is neither a model directory, a config option nor a Hugging Face repo id (org/name)" if group == "model"
                else f"is no {group} option")
        raise ConfigError(f"{group}={value!r} {what}; the options are {', '.join(options)}"
                          + (f": did you mean {near[0]!r}?" if near else ""))
