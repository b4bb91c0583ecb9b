"""Workloads: the requests a run sends. Each returns prompts (strings or token-id lists) and one
SamplingParams per prompt."""
import json
import random
from pathlib import Path

from nvllm.sampling_params import SamplingParams


def build_requests(workload, sampling, tokenizer) -> tuple[list, list[SamplingParams]]:
    kind = workload.kind
    if kind == "chat":
        return _chat(list(workload.prompts), sampling, tokenizer)
    if kind == "file":
        return _file(workload, sampling, tokenizer)
    if kind == "random":
        return _random(workload, sampling)
    raise ValueError(f"unknown workload kind {kind!r}; kinds: chat, file, random")


def _params(sampling, **overrides) -> SamplingParams:
    return SamplingParams(**{**dict(sampling), **overrides})


def _chat(messages: list[str], sampling, tokenizer):
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat workload needs a tokenizer with a chat template; this model has none "
                         "(use workload=random, or workload=file workload.chat=false)")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=True,
                                             add_generation_prompt=True, return_dict=False) for m in messages]
    return prompts, [_params(sampling) for _ in prompts]


def _file(workload, sampling, tokenizer):
    path = Path(workload.path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"workload.path={workload.path!r}: no such file")
    if path.suffix == ".jsonl":
        texts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    else:
        texts = [line for line in path.read_text().splitlines() if line.strip()]
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
