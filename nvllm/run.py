"""`python -m nvllm.run`: load plugins, compose the config, build the engine, run the workload,
print the answers and a summary, write metrics.json in the run directory.

In a sweep (`-m`) a run that cannot or does not finish does not stop the others: its metrics.json
says `status: skipped` (a refusal: the configuration cannot run here) or `status: failed`, with
the reason. A single run raises instead, so the command exits non-zero."""
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nvllm.unshadow import unshadow

unshadow()  # before any other nvllm import: a directory named nvllm here may hide the package
from nvllm.config import setup

setup()  # the plugins, and every component's config in Hydra's ConfigStore, before Hydra composes
logger = logging.getLogger("nvllm.run")


@hydra.main(config_path="pkg://nvllm.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nvllm.config import check_composed
    from nvllm.distributed.workers import WorkerError
    from nvllm.errors import ConfigError
    from nvllm.metrics import not_run, reset_peak_memory, summary_line, to_json
    from nvllm.models.weights import MissingWeightsError, WeightsError
    from nvllm.registry import UnknownComponentError
    from nvllm.workloads import WorkloadError

    setup()  # a launcher's job process (joblib, submitit) runs this function without the module body
    hydra_cfg = HydraConfig.get()
    requested = OmegaConf.to_container(cfg, resolve=False)  # as written, until its interpolations are known to resolve
    reset_peak_memory()  # a sweep's runs share this process under the basic launcher
    try:
        check_composed(cfg)
        requested = OmegaConf.to_container(cfg, resolve=True)
        metrics = run(cfg, requested)
    except Exception as e:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if isinstance(e, (WorkerError, WeightsError, MissingWeightsError, ConfigError, UnknownComponentError,
                              WorkloadError, FileNotFoundError)):
                logger.error(f"nvllm: {e}")  # the user's to fix, and the message names what: no traceback
                sys.exit(1)
            raise
        refused = isinstance(e, (ConfigError, MissingWeightsError))
        if not refused:
            logger.exception(f"run failed: {type(e).__name__}: {e}")
        metrics = not_run("skipped" if refused else "failed", e, requested)
    metrics["overrides"] = list(hydra_cfg.overrides.task)  # what this run's command line (or sweep) set
    out_dir = Path(hydra_cfg.runtime.output_dir)
    (out_dir / "metrics.json").write_text(to_json(metrics))
    logger.info(f"\n{summary_line(metrics)}")
    logger.info(f"metrics: {os.path.relpath(out_dir / 'metrics.json')}")
    if metrics["status"] == "failed" and hydra_cfg.mode != RunMode.MULTIRUN:
        sys.exit(1)  # what completed is in metrics.json; the reason was printed above
    return metrics


def run(cfg: DictConfig, requested: dict) -> dict:
    from nvllm.config import Config
    from nvllm.engine.intake import load_tokenizer
    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.errors import ConfigError
    from nvllm.forward.base import standalone_executor
    from nvllm.metrics import collect, serving_options, simulation_source
    from nvllm.models.weights import check_config_json, resolve_model_path
    from nvllm.workloads import WorkloadError, assign_priorities, make_workload, max_concurrency

    # everything the workload needs is checked before the model loads: a missing or bad key is refused naming it
    serving, concurrency = serving_options(cfg), max_concurrency(cfg.workload)
    config = Config.from_cfg(cfg)
    workload = make_workload(config.workload)
    if standalone_executor(config.forward) is None:
        model_path = resolve_model_path(config.model)
        check_config_json(model_path)  # before transformers reads it: a damaged one is one line
        tokenizer = load_tokenizer(model_path)
        workload.check(tokenizer)
        prompts, params = workload.requests(cfg.sampling, tokenizer)
    else:  # forward=simulated: no tokenizer, so token-id prompts only
        text = (f"forward=simulated loads no tokenizer and sends token ids, and workload={workload.name} sends text; "
                f"use workload=random, sharegpt_like, shared_prefix, or a trace with input_len")
        if workload.prints_prompts:
            raise ConfigError(text)
        try:
            workload.check(None)
            prompts, params = workload.requests(cfg.sampling, None)
        except WorkloadError as e:
            raise ConfigError(f"{text} ({e})") from None
        if any(isinstance(p, str) for p in prompts):
            raise ConfigError(text)
    priorities = assign_priorities(config.workload, len(prompts))
    arrivals = workload.arrivals(len(prompts))
    engine = LLMEngine(config)
    try:
        if engine.random_weights:
            logger.warning("nvllm: RANDOM WEIGHTS — this checkpoint was generated for testing; its text means nothing")
        if engine.clock.simulated:
            sim = engine.executor.describe()
            logger.warning(f"nvllm: SIMULATED{'' if sim['calibrated'] else ', UNCALIBRATED'} — no forward pass runs; "
                           f"every time and rate is simulated ({simulation_source(sim)}, tp={sim['tp']}, {sim['dtype']}, "
                           f"{engine.kv_cache.num_blocks} KV blocks)")
        start = engine.clock.now()
        outputs = engine.generate(prompts, params, priorities=priorities, arrival_times=arrivals,
                                  max_concurrency=concurrency)
        wall = engine.clock.now() - start
        if cfg.print_outputs and workload.prints_prompts:
            for text, out in zip(workload.texts(), outputs):
                answer = f"[{out.outputs[0].finish_reason}: {out.error}]" if out.error else out.outputs[0].text
                logger.info(f"\n>>> {shorten(text)}\n{answer}")
        rate = config.workload.request_rate if arrivals is not None and workload.name != "trace" else None
        metrics = collect(engine, outputs, wall, requested, priorities,
                          {**serving, "request_rate": rate, "open_loop": arrivals is not None})
        metrics.update(burstiness=config.workload.burstiness, max_concurrency=concurrency)
        reasons = [f"request {o.request_id}: {o.error}" for o in outputs if o.outputs[0].finish_reason == "rejected"]
        if reasons:
            logger.warning("\n".join([f"\n{len(reasons)} rejected:", *(f"  {shorten(r, 300)}" for r in reasons[:3]),
                                      *([f"  ... ({len(reasons) - 3} more: see rejected_by_reason in metrics.json)"]
                                        if len(reasons) > 3 else [])]))
        if engine.failure is not None:
            metrics.update(status="failed", reason=f"{type(engine.failure).__name__}: {engine.failure}")
        return metrics
    finally:
        engine.close()


def shorten(text: str, limit: int = 200) -> str:
    """A long prompt as its head and tail, with its length: a terminal-sized line."""
    if len(text) <= limit:
        return text
    return f"{text[:limit * 2 // 3]} ...[{len(text)} characters]... {text[-limit // 4:]}"


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def cli():
    """Ctrl-C or SIGTERM: every rank stops (see nvllm.distributed.workers), one line says so."""
    from nvllm.plugins import check_requested
    from nvllm.registry import UnknownComponentError

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:  # the plugins are loaded: setup() ran with this module's body
        check_requested(dict(arg.split("=", 1) for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")))
    except UnknownComponentError as e:
        sys.exit(f"nvllm: {e}")
    try:
        main()
    except KeyboardInterrupt as e:  # the engine (and its ranks) closed as the interrupt unwound
        from nvllm.serve import exit_now

        print(f"\nnvllm: stopped by {e.args[0] if e.args else 'Ctrl-C'}", file=sys.stderr)
        exit_now(130 if not e.args else 143)


if __name__ == "__main__":
    cli()
