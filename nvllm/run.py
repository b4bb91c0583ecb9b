"""`python -m nvllm.run`: load plugins, compose the config, build the engine, run the workload,
print the answers and a summary, write metrics.json in the run directory.

In a sweep (`-m`) a run that cannot or does not finish does not stop the others: its metrics.json
says `status: skipped` (a refusal: the configuration cannot run here) or `status: failed`, with
the reason. A single run raises instead, so the command exits non-zero."""
import json
import os
import time
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nvllm.plugins import load_plugins

load_plugins()  # registers every component's config before Hydra composes


@hydra.main(config_path="pkg://nvllm.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nvllm.errors import ConfigError
    from nvllm.metrics import not_run, reset_peak_memory, summary_line
    from nvllm.models.weights import MissingWeightsError

    hydra_cfg = HydraConfig.get()
    requested = OmegaConf.to_container(cfg, resolve=True)
    reset_peak_memory()  # a sweep's runs share this process under the basic launcher
    try:
        metrics = run(cfg, requested)
    except Exception as e:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        refused = isinstance(e, (ConfigError, MissingWeightsError))
        if not refused:
            traceback.print_exc()
        metrics = not_run("skipped" if refused else "failed", e, requested)
    metrics["overrides"] = list(hydra_cfg.overrides.task)  # what this run's command line (or sweep) set
    out_dir = Path(hydra_cfg.runtime.output_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\n{summary_line(metrics)}")
    print(f"metrics: {os.path.relpath(out_dir / 'metrics.json')}")
    return metrics


def run(cfg: DictConfig, requested: dict) -> dict:
    from nvllm.config import Config
    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.metrics import collect
    from nvllm.workloads import assign_priorities, build_requests

    engine = LLMEngine(Config.from_cfg(cfg))
    try:
        if engine.random_weights:
            print("nvllm: RANDOM WEIGHTS — this checkpoint was generated for testing; its text means nothing")
        prompts, params = build_requests(cfg.workload, cfg.sampling, engine.tokenizer)
        priorities = assign_priorities(cfg.workload, len(prompts))
        start = time.perf_counter()
        outputs = engine.generate(prompts, params, priorities=priorities)
        wall = time.perf_counter() - start
        if cfg.print_outputs and cfg.workload.kind in ("chat", "file"):
            for out in outputs:
                shown = cfg.workload.prompts[out.index] if cfg.workload.kind == "chat" else out.prompt
                print(f"\n>>> {shown}\n{out.error or out.text}")
        return collect(engine, outputs, wall, requested, priorities)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
