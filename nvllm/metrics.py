"""What a run measured, as the dict written to metrics.json. `serving_metrics` computes vLLM's
serving metrics (`vllm bench serve`'s names and definitions) from per-request timings; the
engine's runs and the HTTP benchmark client both call it."""
import hashlib
import json
import math
import platform
import re
import resource
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version

import torch

from nvllm.errors import ConfigError


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


@dataclass
class MetricsConfig:
    """`metrics.*` in the primary config."""
    # pNN_{ttft,tpot,itl,e2el}_ms written for each
    percentiles: list[float] = field(default_factory=lambda: [50, 90, 99])
    # also the per-request arrays: ttfts, itls, latencies, start_times, input_lens, output_lens
    detailed: bool = False


@dataclass
class SLOConfig:
    """`slo.*`: request_goodput counts the requests that meet every bound given (null: no bound)."""
    # time to first token, ms
    ttft_ms: float | None = None
    # time per output token after the first, ms
    tpot_ms: float | None = None
    # end-to-end latency, ms
    e2el_ms: float | None = None


@dataclass
class RequestTiming:
    """One request's times, in seconds on one clock (any clock, the same for every field)."""
    # scheduled arrival: TTFT and E2EL count from here, so queueing is measured
    arrival: float
    # when output arrived: one entry per token (the tokens one step gave share a time), or per
    # chunk of tokens as a streaming client sees them (vLLM's client records one per chunk);
    # token_times[0] - arrival = TTFT; ITLs are the gaps between distinct times (per chunk)
    token_times: list[float] = field(default_factory=list)
    input_len: int = 0
    # tokens generated (a chunk counts its tokens here); TPOT divides by output_len - 1
    output_len: int = 0
    success: bool = True
    error: str | None = None
    # engine side only: queue wait = first_scheduled - arrival
    first_scheduled: float | None = None
    # engine side only: times the request was preempted (recompute)
    preemptions: int = 0


def _stats(name: str, values: list[float], percentiles, scale: float = 1e3) -> dict:
    """mean_, median_, std_ and pNN_ of `values` (vLLM: numpy's mean, median, std, percentile with
    linear interpolation; an empty list counts as [0])."""
    values = sorted(values) or [0.0]
    out = {f"mean_{name}": statistics.fmean(values) * scale, "median_" + name: percentile(values, 0.5) * scale,
           f"std_{name}": statistics.pstdev(values) * scale}
    for p in percentiles:
        out[f"p{p:g}_{name}"] = percentile(values, p / 100) * scale
    return out


def serving_metrics(timings: list[RequestTiming], duration: float, percentiles=(50, 90, 99),
                    slo: dict | None = None, detailed: bool = False, request_rate: float | None = None,
                    open_loop: bool | None = None) -> dict:
    """vLLM `bench serve`'s metrics: TTFT, TPOT per request = (E2EL - TTFT) / (output_len - 1)
    for requests of more than one token, ITL = every gap between outputs of every request, pooled
    (tokens that came out together are one output), E2EL = last output - arrival; throughputs over `duration` (seconds). `slo` ({"ttft_ms",
    "tpot_ms", "e2el_ms"}, None or absent = no bound): a completed request is good when it meets
    every bound given (a one-token request's TPOT counts as 0). `request_rate`: the configured one
    (None or inf: all at once). `open_loop`: the requests arrived over time (a rate, a trace, HTTP
    clients); default: whether a finite rate was configured. An offline batch (all at once) has no
    request rate: its request_rate and achieved_request_rate are null (the spread of its arrivals is
    the time to queue them, not a rate anyone asked for)."""
    done = [t for t in timings if t.success]
    ttfts = [t.token_times[0] - t.arrival if t.token_times else 0.0 for t in done]
    e2els = [t.token_times[-1] - t.arrival if t.token_times else 0.0 for t in done]
    all_tpots = [(e - f) / (t.output_len - 1) if t.output_len > 1 else 0.0 for t, f, e in zip(done, ttfts, e2els)]
    tpots = [v for v, t in zip(all_tpots, done) if t.output_len > 1]
    itls = [gap for t in done for gap in _gaps(t.token_times)]
    bounds = [(values, (slo or {}).get(key)) for key, values in
              (("ttft_ms", ttfts), ("tpot_ms", all_tpots), ("e2el_ms", e2els))]
    bounds = [(values, bound / 1e3) for values, bound in bounds if bound is not None]
    good = sum(all(values[i] <= bound for values, bound in bounds) for i in range(len(done))) if bounds else None
    input_tokens, output_tokens = sum(t.input_len for t in done), sum(t.output_len for t in done)
    arrivals = sorted(t.arrival for t in timings)
    span = arrivals[-1] - arrivals[0] if arrivals else 0.0
    configured = None if request_rate is None or math.isinf(request_rate) else request_rate
    if open_loop is None:
        open_loop = configured is not None
    out = {
        "duration": duration, "completed": len(done), "failed": len(timings) - len(done),
        "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration if duration else None,
        "request_goodput": good / duration if good is not None and duration else None,
        "output_throughput": output_tokens / duration if duration else None,
        "total_token_throughput": (input_tokens + output_tokens) / duration if duration else None,
        # configured (null: all at t=0) and achieved: arrivals after the first / the span they took
        # (null for an offline batch: see the docstring)
        "request_rate": configured,
        "achieved_request_rate": (len(arrivals) - 1) / span if open_loop and span > 0 else None,
        **_stats("ttft_ms", ttfts, percentiles), **_stats("tpot_ms", tpots, percentiles),
        **_stats("itl_ms", itls, percentiles), **_stats("e2el_ms", e2els, percentiles),
        "max_concurrent_requests": _max_concurrent(done, e2els),
    }
    waits = [t.first_scheduled - t.arrival for t in done if t.first_scheduled is not None]
    if waits:
        out.update(_stats("queue_wait_ms", waits, percentiles))
        out["preemptions_per_request"] = [t.preemptions for t in timings]
    if detailed:
        out.update(ttfts=ttfts, itls=[_gaps(t.token_times) for t in done],
                   latencies=e2els, start_times=[t.arrival for t in done], input_lens=[t.input_len for t in done],
                   output_lens=[t.output_len for t in done], errors=[t.error for t in timings if not t.success])
    return out


def _gaps(times: list[float]) -> list[float]:
    """Inter-token latencies as vLLM's client measures them, one per chunk: tokens that came out
    together (a speculative step's accepted drafts) are one chunk, so no gap of 0 is counted."""
    return [b - a for a, b in zip(times, times[1:]) if b > a]


def _max_concurrent(done: list[RequestTiming], e2els: list[float]) -> int:
    """vLLM's: the most requests active within one one-second bucket of the run."""
    if not done:
        return 0
    start = min(t.arrival for t in done)
    buckets: dict[int, int] = {}
    for t, e2el in zip(done, e2els):
        for second in range(int(t.arrival - start), int(t.arrival + e2el - start) + 1):
            buckets[second] = buckets.get(second, 0) + 1
    return max(buckets.values())


def timing_of(output) -> RequestTiming:
    """The RequestTiming of an engine RequestOutput (a rejected one counts as failed); with n > 1,
    its first completion's tokens and times."""
    first, m = output.outputs[0], output.metrics
    return RequestTiming(m.arrival_time or 0.0, first.token_times, len(output.prompt_token_ids), len(first.token_ids),
                         output.error is None, output.error, m.first_scheduled_time, m.num_preemptions)


def serving_options(cfg) -> dict:
    """serving_metrics' keyword arguments from the config's `metrics` and `slo`, checked."""
    metrics, slo = cfg.get("metrics") or {}, cfg.get("slo") or {}
    percentiles = list(metrics.get("percentiles", (50, 90, 99)))
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p <= 100 for p in percentiles):
        raise ConfigError(f"metrics.percentiles must be a list of numbers in (0, 100], got {percentiles!r}")
    detailed = metrics.get("detailed", False)
    if not isinstance(detailed, bool):
        raise ConfigError(f"metrics.detailed must be true or false, got {detailed!r}")
    bounds = {}
    for key, value in slo.items():
        if key not in ("ttft_ms", "tpot_ms", "e2el_ms"):
            raise ConfigError(f"slo.{key} is not an SLO; the SLOs are slo.ttft_ms, slo.tpot_ms, slo.e2el_ms")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ConfigError(f"slo.{key} must be null (no bound) or a number of milliseconds > 0, got {value!r}")
        if value is not None:
            bounds[key] = value
    return {"percentiles": percentiles, "detailed": detailed, "slo": bounds or None}


def collect(engine, outputs, wall_time: float, requested: dict, priorities: list[int] | None = None,
            serving: dict | None = None) -> dict:
    """metrics.json of a run: vLLM's serving metrics (`serving`: serving_metrics' keyword arguments,
    see serving_options) and nvllm's own, one unit each (latencies in ms, rates per second, sizes in
    bytes). `wall_time` is the generate loop's: loading, compiling and warming up are before it (in
    `startup_s`), so throughputs count generation only."""
    done = [o for o in outputs if o.error is None]
    stats = engine.stats
    device = torch.device(engine.config.device)
    rejected = [o.error for o in outputs if o.outputs[0].finish_reason == "rejected"]
    serving = serving_metrics([timing_of(o) for o in outputs], wall_time, **(serving or {}))
    # every completion counts its tokens (n > 1 makes several per request)
    serving["total_output_tokens"] = sum(len(c.token_ids) for o in done for c in o.outputs)
    serving["output_throughput"] = serving["total_output_tokens"] / wall_time if wall_time else None
    serving["total_token_throughput"] = ((serving["total_input_tokens"] + serving["total_output_tokens"]) / wall_time
                                         if wall_time else None)
    return {
        "status": "ok",
        "requests": len(outputs),
        "rejected": len(rejected),
        # each reason with its numbers as N, so that alike rejections count together
        "rejected_by_reason": dict(sorted(Counter(re.sub(r"\d+", "N", e.split(". ")[0]) for e in rejected).items())),
        **serving,
        # tokens per second of the steps that ran prefills (a mixed step counts here) / only decodes
        "prefill_throughput": stats.prefill_tokens / stats.prefill_time if stats.prefill_time else None,
        "decode_throughput": stats.decode_tokens / stats.decode_time if stats.decode_time else None,
        "steps": stats.steps,
        # seconds before the first request: loading the weights, then compiling and warming up
        "startup_s": dict(engine.startup_s),
        # every request's generated token ids, hashed in request order: two runs that agree token for token match
        "output_tokens_sha256": _digest([[c.token_ids for c in o.outputs] for o in outputs]),
        # speculative decoding, vLLM's counters and rates (null: speculative=none)
        "spec_decode": stats.spec_decode.as_dict() if stats.spec_decode else None,
        "peak_memory_bytes": _peak_memory(device),
        # bytes the model's weights hold (one rank's; the linear layers in quantization's format); null: simulated
        "weight_bytes": engine.executor.weight_bytes(),
        # a mixture of experts' load balance (moe.expert_load): tokens routed to each expert of each
        # layer during the run, and per layer the busiest expert's over the mean; null: no experts counted
        "expert_load": expert_load(engine.executor.expert_load()),
        "ttft_ms_by_priority": _by_priority(done, priorities),
        "preemptions": engine.scheduler.num_preemptions,
        "prefix_cache_hit_rate": engine.kv_cache.hit_rate,
        "kv_cache_blocks": engine.kv_cache.num_blocks,
        "effective_config": {
            **asdict(engine.config),
            "model": {**asdict(engine.config.model), "resolved_path": engine.model_path,
                      "random_weights": engine.random_weights},
            "kv_cache": asdict(engine.config.kv_cache),
            "scheduler": type(engine.scheduler).name,
            "attention": None if engine.clock.simulated else engine.config.attention.name,
            "attention_auto": engine.config.attention_choice,  # what attention=auto chose and why; None: chosen by name
            "sampler": engine.config.sampler.name,
            "forward_auto": engine.config.forward_choice,  # what forward=auto chose and why; None: chosen by name
        },
        "requested_config": requested,
        "versions": _versions(),
        "device": _device_name(device),
        **simulation(engine),
    }


def expert_load(counts: dict | None) -> dict | None:
    """{"tokens_per_expert": {layer: [tokens routed to each expert]}, "max_over_mean": {layer: the
    busiest expert's tokens over the mean, 1 when balanced}} of an executor's expert_load()."""
    if counts is None:
        return None
    return {"tokens_per_expert": {str(layer): c for layer, c in counts.items()},
            "max_over_mean": {str(layer): max(c) * len(c) / sum(c) if sum(c) else None for layer, c in counts.items()}}


def simulation(engine) -> dict:
    """`simulated`: whether the run's times are simulated (forward=simulated: every time and rate in
    the file is then simulated); `simulation`: what simulated them (the cost model, the profile or
    the roofline entry, its measured error, the simulated device) and the host time the run took."""
    if not engine.clock.simulated:
        return {"simulated": False}
    return {"simulated": True, "simulation": engine.executor.describe()}


def strict(value):
    """`value` with every float that JSON cannot hold (inf, nan) as None, recursively: metrics.json
    is strict JSON (`Infinity` breaks JavaScript's JSON.parse, jq reads it as 1.8e308). A configured
    `request_rate: inf` becomes null, which means all at once."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def to_json(metrics: dict) -> str:
    """metrics.json's text: strict JSON (allow_nan=False: a non-finite number left in is an error here,
    not in the reader)."""
    return json.dumps(strict(metrics), indent=2, allow_nan=False)


def _digest(token_ids: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(token_ids).encode()).hexdigest()


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
        if o.metrics.ttft is not None:
            ttft.setdefault(priorities[int(o.request_id)], []).append(o.metrics.ttft * 1e3)
    return {str(p): {"median_ttft_ms": statistics.median(v), "p90_ttft_ms": percentile(v, 0.9), "requests": len(v)}
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
    line = (f"{m['requests']} requests ({m['rejected']} rejected), {m['total_input_tokens']} prompt + "
            f"{m['total_output_tokens']} output tokens in {m['duration']:.2f} s: {m['output_throughput'] or 0:.1f} output tok/s")
    if m["completed"]:
        line += f", median TTFT {m['median_ttft_ms']:.0f} ms"
        if m["total_output_tokens"] > m["completed"]:
            line += f", median TPOT {m['median_tpot_ms']:.1f} ms"
    spec = m.get("spec_decode")  # None unless a drafter ran
    if spec:
        line += (f", draft acceptance {spec['draft_acceptance_rate']:.0%} (mean acceptance length "
                 f"{spec['mean_acceptance_length']:.2f})" if spec["num_drafts"] else ", nothing drafted")
    if m.get("simulated"):
        sim = m["simulation"]
        line = (f"SIMULATED{'' if sim.get('calibrated') else ', UNCALIBRATED'} ({simulation_source(sim)}): {line} "
                f"(simulated time; {sim['host_cpu_s']:.1f} s of CPU here)")
    return line


def simulation_source(sim: dict) -> str:
    """What simulated a run, in a few words: the profile, or the roofline and its hardware entry."""
    if sim.get("cost_model") == "profile":
        return f"profile {sim.get('profile')}, {sim.get('hardware')}"
    if sim.get("cost_model") == "roofline":
        return f"roofline of {sim.get('hardware')}"
    return f"{sim.get('cost_model')}, {sim.get('hardware')}"
