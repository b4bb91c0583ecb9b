"""The host side of a step, measured: where a simulated step's CPU time goes, and what a real
step's host side costs beside it (the roofline cost model's host terms come from here).

1. Decode steps of a simulated engine (forward=simulated, Qwen3-0.6B's shape, roofline of an H200)
   at batch sizes 1 to 256: CPU time per engine step (schedule, the simulated step, postprocess,
   deltas), the median of --steps steps.
2. For the same batches, what a real step adds on the host: the runner packing the inputs
   (`ModelRunner.prepare`) and the default sampler drawing greedy tokens from float32 logits of
   Qwen3's vocabulary on this CPU (on a GPU the sampling is device work).
3. One 10,000-request cell of experiment=sim_capacity under cProfile: each function's share of the
   run, and the shares by module.

    python experiments/sim_host.py --out DIR     # writes host.json, prints the tables
"""
import argparse
import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from nvllm import LLM, SamplingParams
from nvllm.engine.model_runner import step_inputs

BATCHES = (1, 4, 16, 64, 256)


def simulated_steps(batch: int, steps: int) -> float:
    """Seconds of CPU per decode step of `batch` sequences."""
    with LLM({"name": "qwen3", "shape": "qwen3-0.6b"}, forward={"name": "simulated", "hardware": "h200"},
             max_num_seqs=batch, max_model_len=4096) as llm:
        engine = llm.engine
        for i in range(batch):
            engine.add_request(str(i), list(range(1, 65)), SamplingParams(max_tokens=4000, ignore_eos=True), stream=False)
        engine.step()  # the prefills
        times = []
        for _ in range(steps):
            start = time.process_time()
            engine.step()
            times.append(time.process_time() - start)
        engine.abort_requests([str(i) for i in range(batch)], quiet=True)
    return statistics.median(times)


def real_host_parts(batch: int, repeats: int) -> tuple[float, float]:
    """(packing, sampling) seconds of CPU for a decode step of `batch` sequences at 1024 tokens of context."""
    import random

    from nvllm.tools.profile import plan_of

    with LLM({"name": "qwen3", "shape": "tiny"}, forward="eager", max_model_len=1024, max_num_seqs=batch,
             kv_cache={"block_size": 16, "num_blocks": 256}) as llm:
        runner = llm.engine.executor
        plan = plan_of(([], [1024] * batch), 512, 16, 256, random.Random(0), [0])
        logits = torch.randn(batch, 151936)
        pack, sample = [], []
        for _ in range(repeats):
            start = time.process_time()
            runner.prepare(*step_inputs(plan))
            pack.append(time.process_time() - start)
            start = time.process_time()
            runner.sampler(logits, plan.seqs)
            sample.append(time.process_time() - start)
    return statistics.median(pack), statistics.median(sample)


def profile_capacity_cell(rate: float, tp: int, out: Path) -> dict:
    """cProfile of one experiment=sim_capacity cell (fcfs), run through nvllm.run's own code."""
    from hydra import compose, initialize_config_module

    from nvllm.config import setup
    from nvllm.run import run

    setup()
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=sim_capacity", f"workload.request_rate={rate}", f"tp={tp}",
                                           "scheduler=fcfs"])
    profiler = cProfile.Profile()
    start = time.process_time()
    profiler.enable()
    metrics = run(cfg, {})
    profiler.disable()
    cpu = time.process_time() - start
    stats = pstats.Stats(profiler)
    stats.dump_stats(str(out / "capacity_cell.prof"))
    total = sum(v[2] for v in stats.stats.values())  # tottime over every function
    rows = sorted(((v[2], v[3], f"{Path(k[0]).name}:{k[1]}({k[2]})") for k, v in stats.stats.items()), reverse=True)
    by_module: dict[str, float] = {}
    for (file, _, _), v in stats.stats.items():
        module = _module(file)
        by_module[module] = by_module.get(module, 0) + v[2]
    return {"rate": rate, "tp": tp, "cpu_s_profiled": cpu, "steps": metrics["simulation"]["steps"],
            "top_tottime": [{"function": f, "tottime_share": t / total, "cumtime_share": c / total} for t, c, f in rows[:20]],
            "by_module": dict(sorted(((m, t / total) for m, t in by_module.items()), key=lambda x: -x[1]))}


def _module(file: str) -> str:
    if "/nvllm/" in file:
        return "nvllm/" + file.split("/nvllm/", 1)[1]
    if file.startswith("<") or "site-packages" not in file:
        return "python builtins and stdlib"
    return file.split("site-packages/", 1)[1].split("/")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    result = {"threads": 1, "batches": []}
    for batch in BATCHES:
        sim = simulated_steps(batch, args.steps)
        pack, sample = real_host_parts(batch, 20)
        result["batches"].append({"batch": batch, "simulated_step_s": sim, "pack_s": pack, "sample_s": sample})
        print(f"batch {batch:>4}: simulated engine step {sim * 1e3:.3f} ms; a real step adds packing "
              f"{pack * 1e3:.3f} ms and CPU sampling {sample * 1e3:.3f} ms", flush=True)
    # the host time of a real step as a fixed part and a part per sequence (least squares on the batches)
    import numpy as np

    b = np.array([r["batch"] for r in result["batches"]], dtype=float)
    host = np.array([r["simulated_step_s"] + r["pack_s"] for r in result["batches"]])
    per_seq, fixed = np.polyfit(b, host, 1)
    result["host_fit"] = {"step_s": float(fixed), "seq_s": float(per_seq),
                          "what": "engine step (schedule, postprocess, deltas) + packing; sampling left out (device work on a GPU)"}
    print(f"host side of a step (engine + packing): {fixed * 1e3:.3f} ms + {per_seq * 1e6:.2f} us per sequence")
    if not args.skip_profile:
        result["capacity_cell"] = profile_capacity_cell(64, 8, out)
        print("one sim_capacity cell under cProfile, share of the run's time by module:")
        for module, share in list(result["capacity_cell"]["by_module"].items())[:12]:
            print(f"  {share:6.1%}  {module}")
        print("functions by own time:")
        for row in result["capacity_cell"]["top_tottime"][:15]:
            print(f"  {row['tottime_share']:6.1%} own, {row['cumtime_share']:6.1%} with callees  {row['function']}")
    (out / "host.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
