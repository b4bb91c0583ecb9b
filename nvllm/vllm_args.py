"""vLLM's arguments that nvllm does not have, each with what nvllm offers instead (None: nothing):
`SamplingParams(best_of=2)`, `LLM(model, tensor_parallel_size=2)` or `llm.generate(..., priority=[...])`
is refused in one line naming the argument and the alternative, not with a bare TypeError. This
module imports nothing of nvllm's."""
import difflib
import functools
import inspect

_PLUGIN = "a sampler plugin can change the logits (docs/plugins.md)"

SAMPLING = {
    "best_of": "use n=... with logprobs=0 and keep the completion with the highest cumulative_logprob",
    "include_stop_str_in_output": "the text ends before the stop string and CompletionOutput.stop_reason names it",
    "prompt_logprobs": None,
    "logit_bias": _PLUGIN,
    "allowed_token_ids": _PLUGIN,
    "bad_words": _PLUGIN,
    "logits_processors": _PLUGIN,
    "guided_decoding": _PLUGIN,
    "structured_outputs": _PLUGIN,
    "detokenize": "every output has its token_ids beside the text",
    "skip_special_tokens": "the text always leaves special tokens out (token_ids keep them)",
    "spaces_between_special_tokens": None,
    "truncate_prompt_tokens": "pass the token ids to keep yourself: {'prompt_token_ids': ids[-k:]}",
    "output_kind": "LLM.stream yields each step's delta; generate returns the final outputs",
    "extra_args": None,
    "use_beam_search": None,
    "length_penalty": None,
    "early_stopping": None,
}

LLM_ARGS = {
    "tensor_parallel_size": "tp=N",
    "pipeline_parallel_size": "tensor parallelism only: tp=N",
    "enforce_eager": "cudagraph=False",
    "enable_prefix_caching": "kv_cache={'prefix_caching': True}",
    "block_size": "kv_cache={'block_size': N}",
    "gpu_memory_utilization": "kv_cache={'memory_budget_gb': G} or kv_cache={'num_blocks': N}",
    "kv_cache_memory_bytes": "kv_cache={'memory_budget_gb': G}",
    "enable_chunked_prefill": "scheduler='chunked'",
    "speculative_config": "speculative={'name': 'ngram', 'num_speculative_tokens': k}",
    "compilation_config": "compile=True",
    "tokenizer": "the model directory's own tokenizer is used",
    "tokenizer_mode": "the model directory's own tokenizer is used",
    "skip_tokenizer_init": "token-id prompts run without one; a model directory without a tokenizer needs none",
    "trust_remote_code": "nvllm runs its registered architectures, never a checkpoint's own code",
    "kv_cache_dtype": None,
    "download_dir": "HF_HUB_CACHE=... in the environment",
    "hf_token": "HF_TOKEN=... in the environment",
    "revision": "a model directory or the repo's cached snapshot",
    "tokenizer_revision": None,
    "load_format": "safetensors only",
    "swap_space": None,
    "cpu_offload_gb": None,
    "max_seq_len_to_capture": None,
    "distributed_executor_backend": None,
    "disable_custom_all_reduce": None,
    "hf_overrides": None,
    "enable_lora": None,
    "max_loras": None,
    "max_lora_rank": None,
    "task": None,
    "runner": None,
}

GENERATE_ARGS = {
    "priority": "priorities=[...], one int per prompt",
    "lora_request": None,
    "prompt_token_ids": "pass token ids as the prompts: [[1, 2, 3]] or [{'prompt_token_ids': [1, 2, 3]}]",
    "guided_options_request": _PLUGIN,
    "truncate_prompt_tokens": "pass the token ids to keep yourself: {'prompt_token_ids': ids[-k:]}",
    "tokenization_kwargs": None,
    "chat_template": "the model's own template, with chat_template_kwargs=... passed to it",
    "chat_template_content_format": "content is a string or a list of {'type': 'text', 'text': ...} parts",
    "continue_final_message": None,
    "tools": None,
    "mm_processor_kwargs": None,
}


class UnsupportedArgumentError(TypeError, ValueError):
    """An argument nvllm does not take: a TypeError as Python's own for an unexpected keyword, and a
    ValueError as nvllm's other refusals."""


def check(where: str, names, valid, vllm: dict[str, str | None]) -> None:
    """Refuse the first of `names` that is not in `valid`: vLLM's (from `vllm`) with what nvllm
    offers instead, any other with the nearest valid name."""
    for name in names:
        if name in valid:
            continue
        if name in vllm:
            instead = vllm[name]
            raise UnsupportedArgumentError(f"{where}({name}=...) is vLLM's; nvllm has no {name}"
                                           + (f": {instead}" if instead else ""))
        near = difflib.get_close_matches(str(name), list(valid), n=1)
        raise UnsupportedArgumentError(f"{where}({str(name)[:80]}=...): no such argument; "
                                       + (f"did you mean {near[0]}?" if near else f"it takes {', '.join(valid)}"))


def refuse_unknown(vllm: dict[str, str | None]):
    """Decorate a function (or a class's __init__) so that a keyword it does not take is refused by `check`."""
    def wrap(fn):
        valid = [p for p in inspect.signature(fn).parameters if p != "self"]
        where = fn.__qualname__.removesuffix(".__init__")

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            check(where, kwargs, valid, vllm)
            return fn(*args, **kwargs)
        return checked
    return wrap
