"""The workload family: the requests a run sends. A workload is a class with a `name` and a Config
dataclass (the fields under `workload.*`), registered by the `register_workloads` hook like every
other component, so a dataset reader is a plugin (`workload=my_dataset`). Its `requests(sampling,
tokenizer)` returns prompts (strings or token-id lists) and one SamplingParams per prompt; `check`
refuses what cannot run before the model loads, naming the key. Every workload shares the arrival
fields (`request_rate`, `burstiness`, `max_concurrency`, `priorities`, `seed`): `arrival_offsets`
gives open-loop arrival times, `assign_priorities` priorities. Built-ins: random, shared_prefix,
chat, grounded, file, trace, sharegpt."""
import json
import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from omegaconf import MISSING

from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl
from nvllm.sampling_params import SamplingParams


class WorkloadError(ValueError):
    pass


def _get(workload, key: str, default=None):
    """A field of a workload config, whatever holds it (its dataclass, a DictConfig, a dict)."""
    if isinstance(workload, dict) or hasattr(workload, "get") and not hasattr(workload, "__dataclass_fields__"):
        return workload.get(key, default)
    return getattr(workload, key, default)


@dataclass
class WorkloadConfig:
    """The fields every workload has: when requests arrive, their priorities, the seed."""
    name: str = ""
    # requests per second, open loop; inf: all at t=0
    request_rate: float = math.inf
    # gamma shape of the arrival gaps: 1 = Poisson, < 1 burstier, > 1 more even
    burstiness: float = 1.0
    # most requests in flight (a later one waits for a slot); null: no cap
    max_concurrency: Optional[int] = None
    # [lo, hi]: each request's priority drawn from lo..hi (smaller first), seeded; null: none
    priorities: Optional[list[int]] = None
    # seeds the prompts, lengths, arrivals and priorities (each on a stream of its own)
    seed: int = 0


class Workload(ABC):
    """A source of requests. Subclass it, give it a `name` and a Config (a WorkloadConfig subclass),
    register it with `register_workloads`; nvllm.testing.WorkloadSuite checks the contract."""
    name: ClassVar[str]
    Config: ClassVar[type] = WorkloadConfig
    # its prompts are text a person wrote: `nvllm.run` prints each beside its answer
    prints_prompts: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def check(self, tokenizer) -> None:
        """Raise WorkloadError naming the key and the fix if it cannot run with this tokenizer
        (None: the model has none); runs before the model loads."""

    @abstractmethod
    def requests(self, sampling, tokenizer) -> tuple[list, list[SamplingParams]]:
        """Prompts (strings or token-id lists) and one SamplingParams each; `sampling` holds the
        run's SamplingParams fields (`sampling.*`), which a workload may override per request."""

    def texts(self) -> list[str]:
        """The prompts as written (for `prints_prompts` workloads)."""
        return []

    def arrivals(self, num_requests: int) -> list[float] | None:
        """Seconds after the start at which each request arrives; None: all at once."""
        return gamma_arrivals(self.config, num_requests)


def make_workload(cfg) -> Workload:
    """The workload a config names (its `name`), built with that config as it is."""
    from nvllm import registry

    if isinstance(cfg, Workload):
        return cfg
    return registry.get("workload", _get(cfg, "name"))(cfg)


def build_requests(workload, sampling, tokenizer) -> tuple[list, list[SamplingParams]]:
    workload = make_workload(workload)
    workload.check(tokenizer)
    return workload.requests(sampling, tokenizer)


def arrival_offsets(workload, num_requests: int) -> list[float] | None:
    """Seconds after the start at which each request of `workload` (a config naming it) arrives, in
    request order; None: all at once. A trace gives its own; the others draw them (gamma_arrivals)."""
    return make_workload(workload).arrivals(num_requests)


def gamma_arrivals(workload, num_requests: int) -> list[float] | None:
    """None when request_rate is inf (the default: all at once); otherwise gaps as vLLM draws them:
    Gamma(shape=burstiness, scale=1/(request_rate*burstiness)), the first request at 0, seeded by
    `workload.seed` on a stream of its own (the prompts stay the same whatever the rate)."""
    rate = _number(workload, "request_rate", math.inf, "a number > 0, or inf (all at once)", lambda v: v > 0)
    burstiness = _number(workload, "burstiness", 1.0, "a number > 0 (1 = Poisson; < 1 burstier)", lambda v: 0 < v < math.inf)
    if math.isinf(rate):
        return None
    rng = random.Random(f"arrivals-{_get(workload, 'seed', 0)}")
    offsets, t = [], 0.0
    for i in range(num_requests):
        if i:
            t += rng.gammavariate(burstiness, 1 / (rate * burstiness))
        offsets.append(t)
    return offsets


def max_concurrency(workload) -> int | None:
    """`workload.max_concurrency`: most requests in flight (a later one waits for a slot); null: no cap."""
    value = _get(workload, "max_concurrency")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"workload.max_concurrency must be null (no cap) or an integer >= 1, got {value!r}")
    return value


def _number(workload, key: str, default: float, allowed: str, ok) -> float:
    value = _get(workload, key, default)
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        value = math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
        raise ConfigError(f"workload.{key} must be {allowed}, got {value!r}")
    return float(value)


def assign_priorities(workload, num_requests: int) -> list[int] | None:
    """`workload.priorities: [lo, hi]` draws each request's priority uniformly from lo..hi (smaller is
    more urgent), seeded by `workload.seed` on a stream of its own, so the prompts stay the same."""
    bounds = _get(workload, "priorities")
    if bounds is None:
        return None
    rng = random.Random(f"priorities-{_get(workload, 'seed', 0)}")
    return [rng.randint(*bounds) for _ in range(num_requests)]


def _params(sampling, **overrides) -> SamplingParams:
    return SamplingParams(**{**dict(sampling), **overrides})


def _check_chat_template(tokenizer, which: str):
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise WorkloadError(f"{which} sends each prompt through the model's chat template, and this model's tokenizer "
                            f"has none (use workload=random, or workload=file workload.chat=false)")


def _chat(messages: list[str], sampling, tokenizer):
    _check_chat_template(tokenizer, "workload=chat")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=True,
                                             add_generation_prompt=True, return_dict=False) for m in messages]
    return prompts, [_params(sampling) for _ in prompts]


def _file_texts(path_value: str) -> list[str]:
    path = Path(path_value).expanduser()
    if path_value == MISSING:
        raise WorkloadError("workload.path is required: workload.path=/path/to/prompts.txt (or .jsonl)")
    if not path.is_file():
        raise WorkloadError(f"workload.path={path_value!r}: no such file")
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise WorkloadError(f"workload.path={path_value!r} is not UTF-8 text: line {line} has the byte "
                         f"{data[e.start:e.start + 1]!r} ({e.reason}). Save the file as UTF-8 (for example "
                         f"`iconv -f latin1 -t utf-8 {path} > prompts-utf8{path.suffix}`)") from None
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                texts.append(json.loads(line)["prompt"])
            except (ValueError, KeyError, TypeError) as e:
                raise WorkloadError(f"workload.path={path_value!r} line {number}: each line of a .jsonl prompts file "
                                 f"must be an object with a \"prompt\" string ({type(e).__name__}: {e})") from None
    return texts


def _file(workload, sampling, tokenizer):
    texts = _file_texts(workload.path)
    if workload.chat:
        return _chat(texts, sampling, tokenizer)
    return texts, [_params(sampling) for _ in texts]


# `lengths: sharegpt`: lognormal prompt and output lengths, (median tokens, sigma of the log): an
# assumption shaped like ShareGPT conversations' first turns (most short, a long tail; means of a
# few hundred tokens), not a fit to the dataset; a trace of the real one replays it exactly
SHAREGPT_LIKE = {"input": (110, 1.0), "output": (200, 0.9)}


def _length(rng: random.Random, workload, which: str) -> int:
    """A prompt ("input") or output length: uniform in workload.<which>_len, or (`lengths: sharegpt`)
    ShareGPT-like, clipped to that range."""
    lo, hi = _get(workload, f"{which}_len")
    kind = _get(workload, "lengths") or "uniform"
    if kind == "uniform":
        return rng.randint(lo, hi)
    if kind != "sharegpt":
        raise WorkloadError(f"workload.lengths={kind!r} is not allowed: use uniform or sharegpt")
    median, sigma = SHAREGPT_LIKE[which]
    return min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma))))


def _random(workload, sampling):
    """Seeded: the same config gives the same prompts and lengths."""
    rng = random.Random(workload.seed)
    prompts, params = [], []
    # plain values, read once: a config node read per token costs more than drawing it
    sampling, max_token_id, ignore_eos = dict(sampling), workload.max_token_id, workload.ignore_eos
    for _ in range(workload.num_seqs):
        prompt_len = _length(rng, workload, "input")
        prompts.append([rng.randrange(max_token_id) for _ in range(prompt_len)])
        params.append(_params(sampling, max_tokens=_length(rng, workload, "output"), ignore_eos=ignore_eos))
    return prompts, params


def _shared_prefix(workload, sampling):
    """`num_prefixes` long system prompts; a `share_ratio` fraction of the requests starts with one of
    them, the others with a prefix of the same length of their own, then a random suffix. Every draw
    is made whatever the ratio, so runs that differ only in share_ratio send the same amount of work."""
    if not 0 <= workload.share_ratio <= 1:
        raise WorkloadError(f"workload.share_ratio must be in [0, 1], got {workload.share_ratio}")
    rng = random.Random(workload.seed)
    ids = lambda n: [rng.randrange(workload.max_token_id) for _ in range(n)]  # noqa: E731
    shared = [ids(workload.prefix_len) for _ in range(workload.num_prefixes)]
    requests = [(ids(workload.prefix_len), rng.randrange(workload.num_prefixes), ids(rng.randint(*workload.suffix_len)),
                 rng.randint(*workload.output_len)) for _ in range(workload.num_seqs)]
    order = list(range(workload.num_seqs))
    rng.shuffle(order)
    sharing = set(order[:round(workload.share_ratio * workload.num_seqs)])
    prompts = [(shared[which] if i in sharing else own) + suffix for i, (own, which, suffix, _) in enumerate(requests)]
    params = [_params(sampling, max_tokens=out, ignore_eos=workload.ignore_eos) for *_, out in requests]
    return prompts, params


def _trace_lines(workload) -> list[tuple[float, dict]]:
    """(arrival offset in seconds, the line) per line of a JSONL trace: `arrival` (seconds; the
    first line's arrival is time 0) and `output_len`, with `input_len` or `prompt`. Offsets are
    multiplied by `workload.time_scale` (0.5 replays twice as fast)."""
    scale = _number(workload, "time_scale", 1.0, "a number > 0 (it multiplies the trace's arrival times)",
                    lambda v: 0 < v < math.inf)
    path = Path(workload.path).expanduser()
    if workload.path == MISSING:
        raise WorkloadError("workload.path is required: workload.path=/path/to/trace.jsonl")
    if not path.is_file():
        raise WorkloadError(f"workload.path={workload.path!r}: no such file")
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as e:
            raise WorkloadError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(line.get("arrival"), (int, float)) or not isinstance(line.get("output_len"), int) or \
                not (isinstance(line.get("input_len"), int) or isinstance(line.get("prompt"), str)):
            raise WorkloadError(f"{path}:{n}: a trace line needs arrival (seconds), output_len and input_len or "
                             f"prompt, got {text.strip()[:120]}")
        lines.append((float(line["arrival"]), line))
    if not lines:
        raise WorkloadError(f"{path}: the trace has no requests")
    if any(b[0] < a[0] for a, b in zip(lines, lines[1:])):
        raise WorkloadError(f"{path}: arrival times must not decrease from line to line")
    first = lines[0][0]
    return [((a - first) * scale, line) for a, line in lines]


def _trace(workload, sampling):
    """A JSONL trace's requests: its prompt, or `input_len` random token ids (seeded)."""
    rng = random.Random(workload.seed)
    prompts, params = [], []
    for _, line in _trace_lines(workload):
        prompts.append(line["prompt"] if "prompt" in line else
                       [rng.randrange(workload.max_token_id) for _ in range(line["input_len"])])
        params.append(_params(sampling, max_tokens=line["output_len"], ignore_eos=workload.ignore_eos))
    return prompts, params


def _trace_arrivals(workload) -> list[float]:
    return [a for a, _ in _trace_lines(workload)]


def _sharegpt(workload, sampling, tokenizer):
    """vLLM's ShareGPT sampling: the conversations shuffled (seeded), each one's first turn as the
    prompt and its second's length in tokens as max_tokens (or `output_len`), skipping pairs shorter
    than 4 tokens, prompts over `max_input_len` and pairs over `max_len`, until `num_seqs` are found."""
    if tokenizer is None:
        raise WorkloadError("workload=sharegpt measures prompts and answers in tokens and this model has no tokenizer")
    path = Path(workload.path).expanduser()
    if workload.path == MISSING:
        raise WorkloadError("workload.path is required: workload.path=/path/to/ShareGPT_V3_unfiltered_cleaned_split.json")
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise WorkloadError(f"workload.path={workload.path!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise WorkloadError(f"workload.path={workload.path!r} is not JSON ({e}); a ShareGPT file is a JSON list of "
                            f'{{"conversations": [{{"from": "human", "value": ...}}, {{"from": "gpt", ...}}]}}') from None
    pairs = [(d["conversations"][0]["value"], d["conversations"][1]["value"]) for d in data
             if isinstance(d, dict) and len(d.get("conversations") or ()) >= 2]
    if not pairs:
        raise WorkloadError(f"workload.path={workload.path!r} has no conversation of two turns or more "
                            f'(ShareGPT: [{{"conversations": [{{"from": "human", "value": ...}}, ...]}}, ...])')
    random.Random(workload.seed).shuffle(pairs)
    prompts, params = [], []
    for prompt, answer in pairs:
        if len(prompts) == workload.num_seqs:
            break
        prompt_len = len(tokenizer.encode(prompt))
        output_len = workload.output_len or len(tokenizer.encode(answer))
        too_short = prompt_len < 4 or (workload.output_len is None and output_len < 4)
        if too_short or prompt_len > workload.max_input_len or prompt_len + output_len > workload.max_len:
            continue
        if workload.chat:
            _check_chat_template(tokenizer, "workload.chat=true")
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        prompts.append(prompt)
        params.append(_params(sampling, max_tokens=output_len, ignore_eos=workload.ignore_eos))
    if not prompts:
        raise WorkloadError(f"workload.path={workload.path!r}: no conversation passes the length filters (prompt and "
                            f"answer of 4 tokens or more, prompt <= workload.max_input_len={workload.max_input_len}, "
                            f"both <= workload.max_len={workload.max_len})")
    return prompts, params


# -- the built-in workloads ------------------------------------------------------------------------

class RandomWorkload(Workload):
    """nano-vllm's benchmark shape: random token ids, seeded uniform prompt and output lengths, ignore_eos."""
    name = "random"

    @dataclass
    class Config(WorkloadConfig):
        name: str = "random"
        num_seqs: int = 256
        # inclusive range of prompt lengths
        input_len: list[int] = field(default_factory=lambda: [100, 1024])
        # inclusive range of output lengths
        output_len: list[int] = field(default_factory=lambda: [100, 1024])
        # uniform: lengths uniform in the ranges above; sharegpt: ShareGPT-like (lognormal), clipped to them
        lengths: str = "uniform"
        # token ids drawn below this
        max_token_id: int = 10000
        ignore_eos: bool = True

    def check(self, tokenizer):
        lengths = _get(self.config, "lengths") or "uniform"
        if lengths not in ("uniform", "sharegpt"):
            raise WorkloadError(f"workload.lengths={lengths!r} is not allowed: use uniform or sharegpt")

    def requests(self, sampling, tokenizer):
        return _random(self.config, sampling)


class SharedPrefixWorkload(Workload):
    """Requests sharing a few long system prompts: where prefix caching pays (hits are whole KV blocks)."""
    name = "shared_prefix"

    @dataclass
    class Config(WorkloadConfig):
        name: str = "shared_prefix"
        num_seqs: int = 16
        # distinct system prompts
        num_prefixes: int = 2
        # tokens in each system prompt
        prefix_len: int = 512
        # fraction of requests that start with a system prompt; the rest get a prefix of their own
        share_ratio: float = 0.75
        # inclusive range of the per-request part after the prefix
        suffix_len: list[int] = field(default_factory=lambda: [16, 64])
        # inclusive range of output lengths
        output_len: list[int] = field(default_factory=lambda: [8, 32])
        # token ids drawn below this
        max_token_id: int = 10000
        ignore_eos: bool = True

    def check(self, tokenizer):
        if not 0 <= self.config.share_ratio <= 1:
            raise WorkloadError(f"workload.share_ratio must be in [0, 1], got {self.config.share_ratio}")

    def requests(self, sampling, tokenizer):
        return _shared_prefix(self.config, sampling)


class ChatWorkload(Workload):
    """Built-in chat prompts through the model's chat template."""
    name = "chat"
    prints_prompts = True

    @dataclass
    class Config(WorkloadConfig):
        name: str = "chat"
        prompts: list[str] = field(default_factory=lambda: [
            "What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea.",
            "What is 12 times 12?", "Give one tip for writing clear code."])

    def check(self, tokenizer):
        _check_chat_template(tokenizer, "workload=chat")

    def requests(self, sampling, tokenizer):
        return _chat(list(self.config.prompts), sampling, tokenizer)

    def texts(self):
        return list(self.config.prompts)


class GroundedWorkload(ChatWorkload):
    """Input-grounded chat prompts: each asks to repeat, correct, edit or continue a passage or code
    it gives, as summarisation and code editing do, so much of the answer is copied from the prompt
    (where speculative=ngram drafts well)."""
    name = "grounded"

    @dataclass
    class Config(WorkloadConfig):
        name: str = "grounded"
        prompts: list[str] = field(default_factory=lambda: [
            'Repeat the following passage exactly, word for word:\n\nThe lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, polished the great lens and wound the clockwork that turned the light. Ships far out at sea saw the beam sweep across the water every ten seconds, and they knew where the rocks were. In forty years he never missed a night.',
            'Correct the spelling mistakes in this text and return the corrected text:\n\nThe comittee will meet on Wendesday to discus the new budjet. Every departmant must send there report before the meating, and late reports will not be acepted.',
            'Fix the grammar of this paragraph and return it:\n\nYesterday me and my brother goes to the market. We buyed three apples and a large watermelon, but the watermelon were too heavy for to carry, so we leaved it with the seller until the evening.',
            'Add type hints to this Python function and return the whole function:\n\n```python\ndef moving_average(values, window):\n    result = []\n    total = 0.0\n    for i, value in enumerate(values):\n        total += value\n        if i >= window:\n            total -= values[i - window]\n        if i >= window - 1:\n            result.append(total / window)\n    return result\n```',
            'This function should return the largest number in the list, but it has a bug. Return the fixed function:\n\n```python\ndef largest(numbers):\n    best = numbers[0]\n    for number in numbers:\n        if number < best:\n            best = number\n    return best\n```',
            'Copy this shopping list, then add milk at the end:\n\n- two loaves of bread\n- a dozen eggs\n- one kilogram of apples\n- a bag of rice\n- three tins of tomatoes\n- a bottle of olive oil',
            "Quote the sentence of this text that says when the museum opens:\n\nThe city museum has three floors of paintings and a garden of statues. It opens at nine o'clock every morning except Mondays. Entry is free for children under twelve, and guided tours leave from the main hall every hour.",
            'Continue this story in the same style:\n\nThe old clockmaker lived at the edge of the village. Every morning he opened his shop, wound every clock on the wall and listened to them tick. Every evening he closed the shutters, wound every clock again and went to sleep to the sound of their ticking.',
        ])

    def check(self, tokenizer):
        _check_chat_template(tokenizer, "workload=grounded")


class FileWorkload(Workload):
    """Prompts from a file: one per line (.txt) or {"prompt": ...} objects (.jsonl)."""
    name = "file"
    prints_prompts = True

    @dataclass
    class Config(WorkloadConfig):
        name: str = "file"
        # required: workload.path=/path/to/prompts.txt
        path: str = MISSING
        # wrap each prompt in the model's chat template
        chat: bool = True

    def check(self, tokenizer):
        _file_texts(self.config.path)
        if self.config.chat:
            _check_chat_template(tokenizer, "workload=file (workload.chat=true)")

    def requests(self, sampling, tokenizer):
        return _file(self.config, sampling, tokenizer)

    def texts(self):
        return _file_texts(self.config.path)


class TraceWorkload(Workload):
    """Replays a JSONL trace: {"arrival": s, "output_len": n, "input_len": n or "prompt": text} a line."""
    name = "trace"

    @dataclass
    class Config(WorkloadConfig):
        name: str = "trace"
        # required: workload.path=/path/to/trace.jsonl
        path: str = MISSING
        # multiplies the arrival times: 0.5 replays twice as fast
        time_scale: float = 1.0
        # input_len prompts: random token ids below this
        max_token_id: int = 10000
        # generate output_len tokens whatever the model samples
        ignore_eos: bool = True

    def check(self, tokenizer):
        _trace_lines(self.config)

    def requests(self, sampling, tokenizer):
        return _trace(self.config, sampling)

    def arrivals(self, num_requests):
        return _trace_arrivals(self.config)


class ShareGPTWorkload(Workload):
    """Conversations from a ShareGPT-format JSON file, sampled as vLLM's `bench serve --dataset-name sharegpt`."""
    name = "sharegpt"

    @dataclass
    class Config(WorkloadConfig):
        name: str = "sharegpt"
        # required: a JSON list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}
        path: str = MISSING
        num_seqs: int = 100
        # max_tokens of every request; null: the length of the conversation's answer
        output_len: Optional[int] = None
        # skip prompts longer than this, and prompt + answer longer than max_len (tokens)
        max_input_len: int = 1024
        max_len: int = 2048
        # send the prompt through the model's chat template
        chat: bool = False
        ignore_eos: bool = False

    def requests(self, sampling, tokenizer):
        return _sharegpt(self.config, sampling, tokenizer)


@hookimpl
def register_workloads(register):
    for cls in (RandomWorkload, SharedPrefixWorkload, ChatWorkload, GroundedWorkload, FileWorkload, TraceWorkload, ShareGPTWorkload):
        register(cls)
