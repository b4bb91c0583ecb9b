"""What a run measured, as the dict written to metrics.json."""
import platform
import re
import resource
import statistics
from collections import Counter
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

import torch


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def collect(engine, outputs, wall_time: float, requested: dict, priorities: list[int] | None = None) -> dict:
    done = [o for o in outputs if o.error is None]
    ttft = [o.ttft for o in done if o.ttft is not None]
    tpot = [o.tpot for o in done if o.tpot is not None]
    stats = engine.stats
    output_tokens = sum(len(o.token_ids) for o in done)
    device = engine.model_runner.device if engine.model_runner else torch.device(engine.config.device)
    rejected = [o.error for o in outputs if o.finish_reason == "rejected"]
    return {
        "status": "ok",
        "requests": len(outputs),
        "completed": len(done),
        "rejected": len(rejected),
        # each reason with its numbers as N, so that alike rejections count together
        "rejected_by_reason": dict(sorted(Counter(re.sub(r"\d+", "N", e.split(". ")[0]) for e in rejected).items())),
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in done),
        "output_tokens": output_tokens,
        "wall_time_s": wall_time,
        "output_tok_s": output_tokens / wall_time if wall_time else None,
        "prefill_tok_s": stats.prefill_tokens / stats.prefill_time if stats.prefill_time else None,
        "decode_tok_s": stats.decode_tokens / stats.decode_time if stats.decode_time else None,
        "steps": stats.steps,
        "ttft_s": {"median": statistics.median(ttft) if ttft else None, "p90": percentile(ttft, 0.9)},
        "tpot_s": {"median": statistics.median(tpot) if tpot else None, "p90": percentile(tpot, 0.9)},
        "peak_memory_bytes": _peak_memory(device),
        "ttft_s_by_priority": _by_priority(done, priorities),
        "preemptions": engine.scheduler.num_preemptions,
        "prefix_cache_hit_rate": engine.kv_cache.hit_rate,
        "kv_cache_blocks": engine.kv_cache.num_blocks,
        "effective_config": {
            **asdict(engine.config),
            "model": {**asdict(engine.config.model), "resolved_path": engine.model_path,
                      "random_weights": engine.random_weights},
            "kv_cache": asdict(engine.config.kv_cache),
            "scheduler": type(engine.scheduler).name,
            "attention": type(engine.model_runner.attention).name if engine.model_runner else None,
            "attention_auto": engine.config.attention_choice,  # what attention=auto chose and why; None: chosen by name
            "sampler": type(engine.model_runner.sampler).name if engine.model_runner else None,
        },
        "requested_config": requested,
        "versions": _versions(),
        "device": _device_name(device),
    }


def not_run(status: str, error: Exception, requested: dict) -> dict:
    """metrics.json of a sweep run that was refused ("skipped") or raised ("failed")."""
    return {"status": status, "reason": f"{type(error).__name__}: {error}", "requested_config": requested,
            "versions": _versions(), "device": _device_name(torch.device("cpu"))}


def reset_peak_memory():
    """Start this run's peak-memory count afresh (Linux: the process's peak RSS; CUDA: the allocator's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the host peak spans the whole process
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _by_priority(done, priorities) -> dict | None:
    if priorities is None:
        return None
    ttft: dict[int, list[float]] = {}
    for o in done:
        if o.ttft is not None:
            ttft.setdefault(priorities[o.index], []).append(o.ttft)
    return {str(p): {"median": statistics.median(v), "p90": percentile(v, 0.9), "requests": len(v)}
            for p, v in sorted(ttft.items())}


def _peak_memory(device: torch.device) -> dict:
    peak = {"host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return peak


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()}, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("nvllm", "torch", "transformers", "hydra-core", "pluggy", "triton", "flash-attn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def summary_line(m: dict) -> str:
    if m["status"] != "ok":
        done = f" ({m['completed']} of {m['requests']} requests completed before it)" if "completed" in m else ""
        return f"{m['status']}: {m['reason']}{done}"
    return (f"{m['requests']} requests ({m['rejected']} rejected), {m['prompt_tokens']} prompt + "
            f"{m['output_tokens']} output tokens in {m['wall_time_s']:.2f} s: {m['output_tok_s']:.1f} output tok/s")
