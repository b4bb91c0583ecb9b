"""`python -m nvllm.tools.profile [overrides ...] --out FILE`: time the real forward strategy of a
run (the same overrides as `python -m nvllm.run`) on a grid of step shapes here, fit the profile
cost model's terms by least squares, and write a profile for `forward=simulated forward.profile=FILE`.

Each grid step is a real `ModelRunner.run`: packing, the forward pass, sampling, on sequences of
the given shapes whose block tables spread over the whole cache. Prefills of several lengths, with
and without cached context and several to a step; decode batches at several context lengths; and
steps mixing both (chunked prefill). The grid stays inside the run's limits (max_num_seqs,
max_num_batched_tokens, max_model_len, the cache), cheapest steps first, until --budget-s is spent.
The profile records what it was measured with (hardware, model shape, dtype, tp, forward strategy,
attention backend, threads), every measured step and the fit's error on them.

`--hardware` instead measures this machine's memory bandwidth and matmul rate (the `cpu` entry of
nvllm/simulation/hardware.py came from it) and prints them as JSON."""
import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from nvllm.simulation.cost import PROFILE_FORMAT, ProfileCost, ModelDims, StepShape, rel_error

# a step as the grid gives it: prefills as (cached context, query tokens), decodes as context lengths
GridStep = tuple[list[tuple[int, int]], list[int]]


def grid(max_num_seqs: int, max_tokens: int, max_model_len: int, capacity: int) -> list[GridStep]:
    """Step shapes inside the run's limits (`capacity`: tokens the cache holds), cheapest first."""
    def pow2(lo, hi):
        return [n for n in (2**i for i in range(20)) if lo <= n <= hi]

    longest = min(max_tokens, max_model_len - 1)
    steps: list[GridStep] = []
    for q in sorted(set(pow2(8, longest)) | {q * 3 // 2 for q in pow2(8, longest) if q * 3 // 2 <= longest}):
        steps.append(([(0, q)], []))
    for start in {max_model_len // 4, max_model_len // 2, max_model_len * 3 // 4}:
        steps += [([(start, q)], []) for q in (16, 64, 256) if start + q < max_model_len and q <= max_tokens]
    for n in pow2(2, min(32, max_num_seqs)):
        steps += [([(0, q)] * n, []) for q in (16, 32, 64, 128, 256) if n * q <= max_tokens and q < max_model_len]
    contexts = sorted({c for c in (8, 32, 128, 512, 2048) if c < max_model_len} | {max_model_len - 1})
    for batch in sorted(set(pow2(1, min(max_num_seqs, max_tokens))) | {b * 3 // 2 for b in pow2(2, min(max_num_seqs, max_tokens) * 2 // 3)}):
        steps += [([], [c] * batch) for c in contexts if batch * (c + 1) <= capacity]
    for batch in pow2(2, min(64, max_num_seqs - 1)):
        for c in {64, max_model_len // 2} & set(range(1, max_model_len)):
            steps += [([(0, q)], [c] * batch) for q in (32, 128)
                      if q + batch <= max_tokens and q < max_model_len and batch * (c + 1) + q <= capacity]
    unique = {(tuple(p), tuple(d)): (p, d) for p, d in steps}
    return sorted(unique.values(), key=lambda s: _guess(*s))


def _guess(prefills, decodes) -> float:
    """A rough relative cost, only to order the grid."""
    shape = StepShape.synthetic(prefills, decodes)
    return shape.prefill_tokens + shape.decode_seqs + (shape.prefill_attention + shape.decode_kv) / 64


def plan_of(step: GridStep, vocab: int, block_size: int, num_blocks: int, rng: random.Random, cursor: list[int]):
    """The plan of a step of this shape, its sequences' block tables taken in turn around the whole cache."""
    from nvllm.sampling_params import SamplingParams
    from nvllm.sequence import Sequence
    from nvllm.step import StepPlan

    prefills, decodes = step
    greedy = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    seqs = []
    for start, q in [*prefills, *((c, 1) for c in decodes)]:
        seq = Sequence([rng.randrange(vocab) for _ in range(start + q)], greedy, block_size)
        for _ in range(seq.num_blocks):
            seq.block_table.append(cursor[0] % num_blocks)
            cursor[0] += 1
        seq.num_computed_tokens = start
        seqs.append(seq)
    return StepPlan.of(seqs, [q for _, q in [*prefills, *((c, 1) for c in decodes)]])


def measure(engine, budget_s: float, repeats: int, log=print) -> tuple[list[dict], int]:
    """Time `engine`'s runner on the grid: per step the median of `repeats` runs after a warm-up.
    Returns the measured steps and how many grid steps the budget left out."""
    c, runner = engine.config, engine.executor
    block_size = c.kv_cache.block_size
    steps = grid(c.max_num_seqs, c.max_num_batched_tokens, c.max_model_len, runner.num_blocks * block_size)
    rng, cursor, points = random.Random(0), [0], []
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    deadline = time.perf_counter() + budget_s
    for i, step in enumerate(steps):
        if time.perf_counter() > deadline:
            return points, len(steps) - i
        plan = plan_of(step, runner.hf_config.vocab_size, block_size, runner.num_blocks, rng, cursor)
        times = []
        for _ in range(repeats + 1):
            sync()
            start = time.perf_counter()
            runner.execute(plan)
            sync()
            times.append(time.perf_counter() - start)
        shape = StepShape.synthetic(*step)
        points.append({"prefills": step[0], "decodes": step[1], "shape": _shape_dict(shape),
                       "seconds": statistics.median(times[1:])})
        log(f"  {i + 1}/{len(steps)}: {len(step[0])} prefills ({shape.prefill_tokens} tokens), "
            f"{len(step[1])} decodes ({shape.decode_kv} KV): {points[-1]['seconds'] * 1e3:.2f} ms")
    return points, 0


def _shape_dict(shape: StepShape) -> dict:
    return {k: getattr(shape, k) for k in StepShape.__slots__}


def hardware_entry(device: torch.device) -> dict:
    """The hardware a profile was measured on: a name (a hardware-table entry where it is one),
    its kind and memory."""
    from nvllm.metrics import _device_name
    from nvllm.simulation.hardware import HARDWARE

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = [key for key in HARDWARE if key in name.lower()]
        return {"name": known[0] if known else name.lower().replace(" ", "-"), "kind": "gpu", "device": name,
                "memory_gib": torch.cuda.mem_get_info(device)[1] / 2**30}
    return {"name": "cpu", "kind": "cpu", "device": _device_name(device), "memory_gib": _host_memory_gib()}


def _host_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        return None


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def profile(overrides: list[str], budget_s: float = 300, repeats: int = 3, log=print) -> dict:
    """Build the engine the overrides describe, time its forward strategy, fit, and return the profile."""
    from hydra import compose, initialize_config_module

    from nvllm.config import Config, prepare, setup
    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.errors import ConfigError

    setup()
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    engine = LLMEngine(prepare(Config.from_cfg(cfg)))
    try:
        if engine.clock.simulated:
            raise ConfigError("a profile times a real forward strategy; drop forward=simulated (forward=auto times the default)")
        c = engine.config
        started = datetime.now(timezone.utc)
        log(f"profiling forward={c.forward.name} attention={c.attention.name} ({c.device}, {c.dtype}, tp={c.tp}, "
            f"{torch.get_num_threads()} threads), budget {budget_s:.0f} s, load average {_load()}")
        points, left_out = measure(engine, budget_s, repeats, log)
        model, fit = fit_points(points)
        device = engine.executor.device
        return {
            "nvllm_profile": PROFILE_FORMAT,
            "measured": {"date": started.isoformat(timespec="seconds"), "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
                         "command": "python -m nvllm.tools.profile " + " ".join(overrides),
                         "load_average_before": None, "load_average_after": _load(),
                         "grid_steps_left_out": left_out, "repeats": repeats},
            "hardware": hardware_entry(device),
            "model": {"name": c.model.name, "path": engine.model_path, "dims": ModelDims.of(engine.executor.hf_config).as_dict()},
            "dtype": c.dtype, "quantization": c.quantization.name, "tp": c.tp, "forward": c.forward.name,
            "forward_config": vars(c.forward),
            "attention": c.attention.name, "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "block_size": c.kv_cache.block_size,
            "limits": {"max_num_seqs": c.max_num_seqs, "max_num_batched_tokens": c.max_num_batched_tokens,
                       "max_model_len": c.max_model_len, "kv_cache_blocks": engine.executor.num_blocks},
            "coefficients_s": model.coefficients,
            "fit": fit,
            "validation": None,  # filled by python -m nvllm.tools.sim_validate --record
            "points": points,
        }
    finally:
        engine.close()


def fit_points(points: list[dict]) -> tuple[ProfileCost, dict]:
    """The cost model fitted to measured steps; each point gains the fit's prediction and its error."""
    shapes = [StepShape(**p["shape"]) for p in points]
    model, fit = ProfileCost.fit(shapes, [p["seconds"] for p in points])
    for p, shape in zip(points, shapes):
        p["predicted"] = model.step_seconds(shape)
        p["rel_error"] = rel_error(p["predicted"], p["seconds"])
    return model, fit


def refit(path: str) -> dict:
    """A profile's own measured steps fitted again by the current cost model (after the model's terms
    change): the measurements are kept, the coefficients, fit and predictions are new, and the
    validation is cleared (it was the old model's)."""
    result = json.loads(Path(path).read_text())
    model, fit = fit_points(result["points"])
    result.update(coefficients_s=model.coefficients, fit=fit, validation=None, refitted_from=str(path))
    return result


def measure_hardware(repeats: int = 10) -> dict:
    """This machine's achieved memory read bandwidth (summing a 1 GiB tensor) and float32 matmul rate
    (2048 x 2048), with the threads torch uses: the best of `repeats` (what the hardware can do;
    other load on a shared machine only ever slows a repeat down)."""
    def timed(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    x = torch.ones(2**28, dtype=torch.float32)
    read = timed(lambda: x.sum())
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm = timed(lambda: a @ b)
    from nvllm.metrics import _device_name

    return {"device": _device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
            "memory_gib": _host_memory_gib(), "memory_read_bandwidth_bytes_s": x.nbytes / read,
            "float32_matmul_flops": 2 * n**3 / mm, "load_average": _load(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.profile", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="the run's overrides, as for python -m nvllm.run (model=..., tp=...)")
    parser.add_argument("--out", help="where to write the profile (JSON)")
    parser.add_argument("--budget-s", type=float, default=300, help="seconds of timing at most (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per step, after a warm-up (default 3)")
    parser.add_argument("--hardware", action="store_true", help="measure this machine's bandwidth and matmul rate instead")
    parser.add_argument("--refit", metavar="PROFILE", help="fit this profile's measured steps again (no timing)")
    args = parser.parse_intermixed_args(argv)
    if args.hardware:
        print(json.dumps(measure_hardware(), indent=2))
        return
    if not args.out:
        parser.error("--out FILE is required: where to write the profile")
    if args.refit:
        if args.overrides:
            parser.error("--refit takes no overrides: the profile says what it measured")
        result = refit(args.refit)
    else:
        load = _load()
        result = profile(args.overrides, args.budget_s, args.repeats, log=lambda m: print(m, file=sys.stderr))
        result["measured"]["load_average_before"] = load
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    fit = result["fit"]
    print(f"profile of forward={result['forward']} attention={result['attention']} on {result['hardware']['device']}: "
          f"{fit['steps']} steps, fit error median {fit['median_abs_rel_error']:.1%}, p90 {fit['p90_abs_rel_error']:.1%}, "
          f"max {fit['max_abs_rel_error']:.1%}; coefficients (s): "
          + ", ".join(f"{k} {v:.3g}" for k, v in result["coefficients_s"].items()))
    if result["measured"]["grid_steps_left_out"]:
        print(f"the budget left out the {result['measured']['grid_steps_left_out']} largest grid steps (--budget-s)")
    print(f"profile: {out}   use: python -m nvllm.run forward=simulated forward.profile={out} ...")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
