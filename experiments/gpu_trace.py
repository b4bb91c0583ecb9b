"""Where a decode step's time goes: a torch.profiler trace of nano-vllm's benchmark at full batch.

The engine runs with its defaults on nano-vllm's 256 requests (bench_gpu.py's workload and its
random-weight Qwen3-0.6B-shape checkpoint, temperature 0.6, ignore_eos), steps until every request
has its prompt in the cache and is decoding, warms up, then profiles `--steps` decode steps. It
reports, per decode step: the device's busy time (the union of its kernels' intervals), the wall
time, and the gap between them, the time the device waits for the host (scheduling, packing,
sampling's host part, postprocessing, deltas, launch latency: what overlap scheduling hides); and
the top kernels by device time. Writes summary.json, the summary table (summary.txt) and the
gzipped Chrome trace under --out; prints the table last.

    python experiments/gpu_trace.py --out DIR [--checkpoint DIR]   # on a CUDA machine
    python experiments/gpu_trace.py --smoke --out DIR              # CPU, tiny model: checks the script
On a CPU there is no device to wait: the table lists the top operators by CPU time instead."""
import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import ensure_checkpoint, workload  # noqa: E402  (nano-vllm's requests, draw for draw)


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time the device ran at least one kernel."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def kernel_events(prof) -> list:
    """The device kernels (and memcpys) the profiler saw, as FunctionEvents."""
    from torch.autograd import DeviceType

    return [e for e in prof.events() if e.device_type == DeviceType.CUDA]


def summarize(prof, steps: int, wall_s: float, device: str, top: int = 15) -> dict:
    """Per-step device busy time, wall time, the gap between them, and the top kernels (ops on a CPU)."""
    per_step = lambda us: us / steps / 1e3  # noqa: E731  (microseconds in all steps -> ms per step)
    summary = dict(device=device, steps=steps, wall_ms_per_step=wall_s * 1e3 / steps)
    if device == "cuda":
        kernels = kernel_events(prof)
        busy = busy_time([(e.time_range.start, e.time_range.end) for e in kernels])
        summary.update(device_busy_ms_per_step=per_step(busy), kernels_per_step=len(kernels) / steps)
        summary["host_gap_ms_per_step"] = summary["wall_ms_per_step"] - summary["device_busy_ms_per_step"]
        by_name: dict[str, list[float]] = {}
        for e in kernels:
            by_name.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
        total = sum(sum(v) for v in by_name.values()) or 1.0
        rows = sorted(((sum(v), len(v), name) for name, v in by_name.items()), reverse=True)[:top]
        summary["top"] = [dict(name=name, ms_per_step=per_step(us), calls_per_step=calls / steps, share=us / total)
                          for us, calls, name in rows]
    else:
        averages = [a for a in prof.key_averages() if a.self_cpu_time_total > 0]
        total = sum(a.self_cpu_time_total for a in averages) or 1.0
        rows = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
        summary["top"] = [dict(name=a.key, ms_per_step=per_step(a.self_cpu_time_total), calls_per_step=a.count / steps,
                               share=a.self_cpu_time_total / total) for a in rows]
    return summary


def table(summary: dict, effective: dict) -> str:
    lines = [f"config: {', '.join(f'{k}={v}' for k, v in effective.items())}",
             f"decode steps profiled: {summary['steps']} at batch {summary['batch']}; "
             f"wall {summary['wall_ms_per_step']:.3f} ms/step"]
    if "device_busy_ms_per_step" in summary:
        lines.append(f"device busy {summary['device_busy_ms_per_step']:.3f} ms/step ({summary['kernels_per_step']:.0f} "
                     f"kernels); host-side gap {summary['host_gap_ms_per_step']:.3f} ms/step (device idle, waiting for the host)")
    what = "kernel" if summary["device"] == "cuda" else "operator (self CPU time)"
    lines.append(f"{'ms/step':>8} {'calls':>6} {'share':>6}  {what}")
    for t in summary["top"]:
        lines.append(f"{t['ms_per_step']:8.3f} {t['calls_per_step']:6.1f} {t['share']:6.1%}  {t['name'][:110]}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--checkpoint", help="the random Qwen3-0.6B-shape checkpoint (made here if missing)")
    parser.add_argument("--steps", type=int, default=5, help="decode steps profiled")
    parser.add_argument("--warmup", type=int, default=5, help="decode steps before the profiler starts")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random model, 4 short requests")
    args = parser.parse_args()
    from nvllm import LLM, SamplingParams

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_checkpoint(Path(args.checkpoint) if args.checkpoint else out / "ckpt", args.smoke)
    prompts, max_tokens = workload(4, 16, 32, 500) if args.smoke else workload()
    overrides = dict(device="cpu") if args.smoke else {}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if not args.smoke:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with LLM(str(checkpoint), **overrides) as llm:
        engine = llm.engine
        config = engine.config
        effective = dict(device=config.device, dtype=config.dtype, forward=config.forward.name,
                         attention=type(engine.executor.attention).name,
                         async_scheduling=config.async_scheduling)
        for i, (p, n) in enumerate(zip(prompts, max_tokens)):
            engine.add_request(str(i), p, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n), stream=False)
        scheduler = engine.scheduler
        while scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in scheduler.running):
            engine.step()  # the prefills
        for _ in range(args.warmup):
            engine.step()
        batch = len(scheduler.running)
        synchronize = torch.cuda.synchronize if config.device == "cuda" else (lambda: None)
        synchronize()
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                with torch.profiler.record_function("nvllm.step"):
                    engine.step()
            synchronize()
            wall = time.perf_counter() - start
        engine.abort_requests([str(i) for i in range(len(prompts))], quiet=True)
    summary = dict(summarize(prof, args.steps, wall, config.device), batch=batch, effective=effective)
    trace = out / "chrome_trace.json"
    prof.export_chrome_trace(str(trace))
    with trace.open("rb") as raw, gzip.open(out / "trace.json.gz", "wb") as packed:
        shutil.copyfileobj(raw, packed)
    trace.unlink()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = table(summary, effective)
    (out / "summary.txt").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
