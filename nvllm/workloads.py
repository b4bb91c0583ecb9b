"""Workloads: the requests a run sends. Each returns prompts (strings or token-id lists) and one
SamplingParams per prompt; `assign_priorities` gives them priorities when the workload asks, and
`arrival_offsets` their arrival times (open loop: `request_rate`, `burstiness`, or a trace's)."""
import json
import math
import random
from pathlib import Path

from nvllm.errors import ConfigError
from nvllm.sampling_params import SamplingParams


class WorkloadError(ValueError):
    pass


def build_requests(workload, sampling, tokenizer) -> tuple[list, list[SamplingParams]]:
    kind = workload.kind
    if kind == "chat":
        return _chat(list(workload.prompts), sampling, tokenizer)
    if kind == "file":
        return _file(workload, sampling, tokenizer)
    if kind == "random":
        return _random(workload, sampling)
    if kind == "shared_prefix":
        return _shared_prefix(workload, sampling)
    if kind == "trace":
        return _trace(workload, sampling)
    raise ValueError(f"unknown workload kind {kind!r}; kinds: chat, file, random, shared_prefix, trace")


def arrival_offsets(workload, num_requests: int) -> list[float] | None:
    """Seconds after the start at which each request arrives, in request order; None: all at
    once (request_rate inf, the default). Gaps as vLLM draws them: Gamma(shape=burstiness,
    scale=1/(request_rate*burstiness)), the first request at 0, seeded by `workload.seed` on a
    stream of its own (the prompts stay the same whatever the rate). A trace gives its own."""
    if workload.kind == "trace":
        return [a for a, _ in _trace_lines(workload)]
    rate = _number(workload, "request_rate", math.inf, "a number > 0, or inf (all at once)", lambda v: v > 0)
    burstiness = _number(workload, "burstiness", 1.0, "a number > 0 (1 = Poisson; < 1 burstier)", lambda v: 0 < v < math.inf)
    if math.isinf(rate):
        return None
    rng = random.Random(f"arrivals-{workload.get('seed', 0)}")
    offsets, t = [], 0.0
    for i in range(num_requests):
        if i:
            t += rng.gammavariate(burstiness, 1 / (rate * burstiness))
        offsets.append(t)
    return offsets


def max_concurrency(workload) -> int | None:
    """`workload.max_concurrency`: most requests in flight (a later one waits for a slot); null: no cap."""
    value = workload.get("max_concurrency")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"workload.max_concurrency must be null (no cap) or an integer >= 1, got {value!r}")
    return value


def _number(workload, key: str, default: float, allowed: str, ok) -> float:
    value = workload.get(key, default)
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        value = math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not ok(value):
        raise ConfigError(f"workload.{key} must be {allowed}, got {value!r}")
    return float(value)


def assign_priorities(workload, num_requests: int) -> list[int] | None:
    """`workload.priorities: [lo, hi]` draws each request's priority uniformly from lo..hi (smaller is
    more urgent), seeded by `workload.seed` on a stream of its own, so the prompts stay the same."""
    bounds = workload.get("priorities")
    if bounds is None:
        return None
    rng = random.Random(f"priorities-{workload.get('seed', 0)}")
    return [rng.randint(*bounds) for _ in range(num_requests)]


def _params(sampling, **overrides) -> SamplingParams:
    return SamplingParams(**{**dict(sampling), **overrides})


def _chat(messages: list[str], sampling, tokenizer):
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat workload needs a tokenizer with a chat template; this model has none "
                         "(use workload=random, or workload=file workload.chat=false)")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=True,
                                             add_generation_prompt=True, return_dict=False) for m in messages]
    return prompts, [_params(sampling) for _ in prompts]


def prompt_texts(workload) -> list[str]:
    """The prompts of a chat or file workload as the user wrote them (to print beside the answers)."""
    return list(workload.prompts) if workload.kind == "chat" else _file_texts(workload.path)


def _file_texts(path_value: str) -> list[str]:
    path = Path(path_value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"workload.path={path_value!r}: no such file")
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


def _random(workload, sampling):
    """Seeded: the same config gives the same prompts and lengths."""
    rng = random.Random(workload.seed)
    prompts, params = [], []
    for _ in range(workload.num_seqs):
        prompt_len = rng.randint(*workload.input_len)
        prompts.append([rng.randrange(workload.max_token_id) for _ in range(prompt_len)])
        params.append(_params(sampling, max_tokens=rng.randint(*workload.output_len), ignore_eos=workload.ignore_eos))
    return prompts, params


def _shared_prefix(workload, sampling):
    """`num_prefixes` long system prompts; a `share_ratio` fraction of the requests starts with one of
    them, the others with a prefix of the same length of their own, then a random suffix. Every draw
    is made whatever the ratio, so runs that differ only in share_ratio send the same amount of work."""
    if not 0 <= workload.share_ratio <= 1:
        raise ValueError(f"workload.share_ratio must be in [0, 1], got {workload.share_ratio}")
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
    if not path.is_file():
        raise FileNotFoundError(f"workload.path={workload.path!r}: no such file")
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        line = json.loads(text)
        if not isinstance(line.get("arrival"), (int, float)) or not isinstance(line.get("output_len"), int) or \
                not (isinstance(line.get("input_len"), int) or isinstance(line.get("prompt"), str)):
            raise ValueError(f"{path}:{n}: a trace line needs arrival (seconds), output_len and input_len or "
                             f"prompt, got {text.strip()[:120]}")
        lines.append((float(line["arrival"]), line))
    if not lines:
        raise ValueError(f"{path}: the trace has no requests")
    if any(b[0] < a[0] for a, b in zip(lines, lines[1:])):
        raise ValueError(f"{path}: arrival times must not decrease from line to line")
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
