"""`python -m nvllm.run`: load plugins, compose the config, build the engine, run the workload,
print the answers and a summary, write metrics.json in the run directory."""
import json
import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nvllm.plugins import load_plugins

load_plugins()  # registers every component's config before Hydra composes


@hydra.main(config_path="pkg://nvllm.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.metrics import collect, summary_line
    from nvllm.workloads import build_requests

    engine = LLMEngine(cfg)
    try:
        if engine.random_weights:
            print("nvllm: RANDOM WEIGHTS — this checkpoint was generated for testing; its text means nothing")
        prompts, params = build_requests(cfg.workload, cfg.sampling, engine.tokenizer)
        start = time.perf_counter()
        outputs = engine.generate(prompts, params)
        wall = time.perf_counter() - start
        if cfg.print_outputs and cfg.workload.kind != "random":
            for out in outputs:
                shown = cfg.workload.prompts[out.index] if cfg.workload.kind == "chat" else out.prompt
                print(f"\n>>> {shown}\n{out.error or out.text}")
        metrics = collect(engine, outputs, wall, OmegaConf.to_container(cfg, resolve=True))
    finally:
        engine.close()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\n{summary_line(metrics)}")
    print(f"metrics: {os.path.relpath(out_dir / 'metrics.json')}")
    return metrics


if __name__ == "__main__":
    main()
