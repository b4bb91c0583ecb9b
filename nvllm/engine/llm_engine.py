"""The engine loop: admit requests, then step — schedule, run the model, postprocess — until
every request has finished. Components come from the registry; none of this code sees a
DictConfig or a plugin."""
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from nvllm import registry
from nvllm.config import Config
from nvllm.distributed.workers import WorkerError, Workers
from nvllm.engine.model_runner import ModelRunner
from nvllm.sequence import Sequence
from nvllm.models.weights import is_random, resolve_model_path
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams


@dataclass
class RequestOutput:
    index: int
    prompt: str | None
    prompt_token_ids: list[int]
    # generated tokens only
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    # stop (end-of-sequence), length (max_tokens or max_model_len), rejected (see `error`)
    finish_reason: str | None = None
    error: str | None = None
    # seconds from submission to the first generated token, and per later token
    ttft: float | None = None
    tpot: float | None = None


@dataclass
class StepStats:
    prefill_tokens: int = 0
    prefill_time: float = 0.0
    decode_tokens: int = 0
    decode_time: float = 0.0
    steps: int = 0


class LLMEngine:
    def __init__(self, config: Config):
        """`config`: the typed configuration (`Config.from_cfg` of a composed Hydra config)."""
        self.failure = None  # set when a fault stopped the engine
        load_plugins()
        self.model_path = resolve_model_path(config.model)
        self.random_weights = is_random(self.model_path)
        hf_config = AutoConfig.from_pretrained(self.model_path)
        self.config = config = config.resolve(hf_config)
        self.tokenizer = _load_tokenizer(self.model_path)
        runner_args = (config, self.model_path)
        self.workers = Workers(config.tp, ModelRunner, runner_args) if config.tp > 1 else None
        try:
            self.model_runner = ModelRunner(*runner_args, control_group=self.workers and self.workers.group)
        except BaseException as e:  # Ctrl-C included: the workers must not outlive it
            self._fail(e)
        self.kv_cache = registry.build("kv_cache", config.kv_cache, num_blocks=self.model_runner.num_blocks,
                                       block_size=config.kv_cache.block_size)
        self.scheduler = registry.build(
            "scheduler", config.scheduler, kv_cache=self.kv_cache, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens, max_model_len=config.max_model_len,
            eos_token_ids=_eos_ids(self.tokenizer, hf_config))
        self.stats = StepStats()

    # -- requests --------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"{self.model_path} has no tokenizer; pass prompts as lists of token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def add_request(self, prompt: str | list[int], sampling_params: SamplingParams, priority: int = 0) -> Sequence:
        """Validate and queue one request; a bad one raises ValueError and changes nothing."""
        if getattr(self, "model_runner", None) is None:
            raise RuntimeError("the engine is closed: create a new LLM to generate again")
        if self.failure is not None:
            raise RuntimeError(f"the engine stopped after a failure ({self.failure}); create a new LLM")
        token_ids = self.encode(prompt)
        if not token_ids:
            raise ValueError("empty prompt: a prompt needs at least one token")
        vocab = self.model_runner.hf_config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        max_len = self.config.max_model_len
        if len(token_ids) >= max_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens; max_model_len={max_len} leaves no room to "
                             f"generate. Shorten the prompt or raise max_model_len")
        final_len = min(len(token_ids) + sampling_params.max_tokens, max_len)
        blocks_needed = -(-final_len // self.config.kv_cache.block_size)
        if blocks_needed > self.kv_cache.num_blocks:
            raise ValueError(
                f"request needs {blocks_needed} KV blocks ({final_len} tokens) but the whole cache has "
                f"{self.kv_cache.num_blocks}; raise kv_cache.num_blocks or kv_cache.memory_budget_gb, "
                f"or lower max_tokens")
        seq = Sequence(token_ids, sampling_params, self.config.kv_cache.block_size, priority)
        seq.arrival_time = time.perf_counter()
        self.scheduler.add(seq)
        return seq

    # -- the loop -----------------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        seqs = self.scheduler.schedule()
        if not seqs:
            raise RuntimeError("the scheduler picked nothing while requests are pending")
        num_tokens = sum(seq.num_scheduled_tokens for seq in seqs)
        is_decode = num_tokens == len(seqs) and all(s.num_computed_tokens >= s.num_prompt_tokens for s in seqs)
        start = time.perf_counter()
        try:
            token_ids = self.model_runner.run(seqs)
        except BaseException as e:  # Ctrl-C mid-step included: the workers are mid-step too
            self._fail(e)
        now = time.perf_counter()
        finished = self.scheduler.postprocess(seqs, token_ids)
        for seq in seqs:
            if seq.num_completion_tokens and not seq.first_token_time:
                seq.first_token_time = now
        for seq in finished:
            seq.finish_time = now
            self.model_runner.sampler.release(seq)
        s = self.stats
        s.steps += 1
        if is_decode:
            s.decode_tokens, s.decode_time = s.decode_tokens + num_tokens, s.decode_time + now - start
        else:
            s.prefill_tokens, s.prefill_time = s.prefill_tokens + num_tokens, s.prefill_time + now - start
        return finished

    def is_finished(self) -> bool:
        return self.scheduler.is_finished()

    def generate(self, prompts: list, sampling_params: list[SamplingParams], use_tqdm: bool = True,
                 priorities: list[int] | None = None) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order. A prompt that
        is rejected gets an output with `error` set; the others run as if it was never sent.
        `priorities` (one per prompt, smaller first) matter to priority-aware schedulers."""
        outputs, by_seq = [], {}
        priorities = [0] * len(prompts) if priorities is None else priorities
        for i, (prompt, sp, priority) in enumerate(zip(prompts, sampling_params, priorities, strict=True)):
            out = RequestOutput(i, prompt if isinstance(prompt, str) else None, [])
            try:
                seq = self.add_request(prompt, sp, priority)
            except ValueError as e:
                out.finish_reason, out.error = "rejected", str(e)
            else:
                out.prompt_token_ids = seq.token_ids[:]
                by_seq[seq.seq_id] = out
            outputs.append(out)
        with tqdm(total=len(by_seq), desc="Generating", dynamic_ncols=True, disable=not use_tqdm or not by_seq) as bar:
            while not self.is_finished():
                prefill_before, decode_before = self.stats.prefill_tokens, self.stats.decode_tokens
                start = time.perf_counter()
                try:
                    finished = self.step()
                except WorkerError as e:  # what finished is kept; the rest carry the error
                    for out in by_seq.values():
                        if out.finish_reason is None:
                            out.finish_reason, out.error = "abort", str(e)
                    break
                elapsed = time.perf_counter() - start
                if self.stats.prefill_tokens > prefill_before:
                    bar.set_postfix_str(f"prefill {(self.stats.prefill_tokens - prefill_before) / elapsed:.0f} tok/s", refresh=False)
                else:
                    bar.set_postfix_str(f"decode {(self.stats.decode_tokens - decode_before) / elapsed:.0f} tok/s", refresh=False)
                for seq in finished:
                    self._fill_output(by_seq[seq.seq_id], seq)
                bar.update(len(finished))
        return outputs

    def _fill_output(self, out: RequestOutput, seq: Sequence):
        out.token_ids = seq.completion_token_ids
        out.finish_reason = seq.finish_reason
        if self.tokenizer is not None:
            out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        out.ttft = seq.first_token_time - seq.arrival_time
        if seq.num_completion_tokens > 1:
            out.tpot = (seq.finish_time - seq.first_token_time) / (seq.num_completion_tokens - 1)

    def _fail(self, error: BaseException):
        """Under TP, a failure usually means a worker died: say which, stop every rank, re-raise."""
        workers, self.workers = getattr(self, "workers", None), None
        if workers is None:
            raise error
        worker_error = workers.error() if workers.dead() or _is_comm_error(error) else None
        workers.abort()
        if worker_error is not None:
            self.failure = worker_error
            raise worker_error from error
        self.failure = error
        raise error

    def close(self):
        if getattr(self, "model_runner", None) is not None:
            self.model_runner.close()
            self.model_runner = None
        if getattr(self, "workers", None) is not None:
            self.workers.close()
            self.workers = None


def _is_comm_error(error: Exception) -> bool:
    return "gloo" in str(error).lower() or "nccl" in str(error).lower() or "connection" in str(error).lower()


def _load_tokenizer(path: str):
    import os

    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return AutoTokenizer.from_pretrained(path)


def _eos_ids(tokenizer, hf_config) -> frozenset[int]:
    ids = set()
    for source in (getattr(hf_config, "eos_token_id", None), tokenizer and tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    return frozenset(ids)

