"""Everything one engine runs with, built from a run resolved at the edge (nvllm.config.prepare: the
config with every `auto` decided, the checkpoint's config and tokenizer, read once): the executor
(the model runner, with tensor-parallel workers, or the simulator), the KV cache allocator, the
scheduler, the drafter, and the warm-up. Components come from the registry and get what they need
as arguments."""
import logging
import time
from dataclasses import dataclass
from typing import Any

from nvllm import registry
from nvllm.clock import Clock
from nvllm.config import Config, Resolved
from nvllm.distributed.workers import Workers
from nvllm.engine import intake
from nvllm.engine.model_runner import ModelRunner
from nvllm.forward.base import standalone_executor
from nvllm.models.weights import is_random

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    config: Config  # resolved: no `auto` left
    model_path: str
    random_weights: bool
    vocab_size: int
    tokenizer: Any  # None: the model ships none, or forward=simulated
    workers: Workers | None  # tp > 1: the other ranks
    executor: Any  # an nvllm.step.Executor
    clock: Clock
    kv_cache: Any
    scheduler: Any
    drafter: Any
    startup_s: dict  # seconds: loading, warm-up


def build(resolved: Resolved) -> Parts:
    """The engine's parts. Whatever interrupts the load or the warm-up (Ctrl-C included) stops the
    tensor-parallel workers first, and a dead worker's error is the one raised."""
    if not isinstance(resolved, Resolved):
        raise TypeError(f"the engine is built from a run resolved at the edge, LLMEngine(nvllm.config.prepare(config)), "
                        f"not from a {type(resolved).__name__}")
    started = time.perf_counter()
    config, checkpoint = resolved.config, resolved.checkpoint
    model_path, hf_config, tokenizer = checkpoint.path, checkpoint.hf_config, checkpoint.tokenizer
    # forward=simulated: an executor of its own, which loads no weights and needs no tokenizer
    standalone = standalone_executor(config.forward)
    eos = intake.eos_ids(tokenizer, hf_config)
    # -- the executor on rank 0, and under TP the other ranks' workers
    workers = None
    if standalone is not None:
        executor = standalone(config.forward, config, hf_config)
    else:
        workers = Workers(config.tp, ModelRunner, (config, model_path)) if config.tp > 1 else None
        try:
            executor = ModelRunner(config, model_path, workers and workers.group, eos, hf_config)
        except BaseException as e:  # Ctrl-C included: the workers must not outlive it
            _stop(workers, e)
    # -- the KV cache, the scheduler that allocates from it, the drafter
    kv_cache = registry.build("kv_cache", config.kv_cache, num_blocks=executor.num_blocks,
                              block_size=config.kv_cache.block_size)
    scheduler = registry.build(
        "scheduler", config.scheduler, kv_cache=kv_cache, max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens, max_model_len=config.max_model_len, eos_token_ids=eos)
    drafter = registry.build("speculative", config.speculative, runner=executor)
    # -- warm-up (torch.compile compiles here), timed apart from every request
    loaded = time.perf_counter()
    if config.compile:
        logger.info("compiling the model with torch.compile (compile=true): the first time takes a minute "
                    "or more, later runs read the compile cache")
    try:
        executor.warm_up()
    except BaseException as e:
        _stop(workers, e)
    return Parts(config, model_path, is_random(model_path) and standalone is None, hf_config.vocab_size, tokenizer,
                 workers, executor, executor.clock or Clock(), kv_cache, scheduler, drafter,
                 {"load": loaded - started, "warmup": time.perf_counter() - loaded})


def _stop(workers: Workers | None, error: BaseException):
    if workers is None:
        raise error
    failure = workers.fail(error)
    if failure is error:
        raise error
    raise failure from error
