"""`python -m nvllm.tools.bench --workload host`: the engine's host work per decode step, with the
forward pass replaced by a no-op (fixed logits, no model), at several batch sizes, greedy and
sampled, broken down by phase.

On a GPU a decode step is the device's time plus whatever the host does in series with it
(scheduling, packing inputs, sampling's host part, postprocessing, deltas); this measures the
second term alone. The forward pass goes through the forward family like any other strategy
(`NoopForward`, registered by this tool for its own process only): the engine, the scheduler,
the KV cache allocator, the input packing, the sampler and the deltas are the real ones.

Each batch: that many requests with prompts of 100..1024 random token ids (seed 0, as nano-vllm's
benchmark), ignore_eos, decoded until every prompt is in the cache; then `--warmup` decode steps,
then `--steps` timed ones (no request finishes in between). The phases are timed by wrapping the
engine's components on the instance: `schedule` (the scheduler's), `pack` (the runner's execute,
or launch, less the forward pass and the sampling), `forward`, `sample` (the sampler, and under
overlap the runner's sample and collect), `postprocess` (the scheduler's update, and commit) and
`deltas` (the step less everything else). Their sum is the
step; the wrappers cost well under a microsecond each. With `--nvllm async_scheduling=true` only the step's total means anything
(phases overlap).

The logits have the tiny checkpoint's vocabulary (512 tokens), so sampling's arithmetic is small
and its host part is what shows; the model's weights are never read."""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nvllm.forward.base import ForwardStrategy

PHASES = ("schedule", "pack", "forward", "sample", "postprocess", "deltas")


class NoopForward(ForwardStrategy):
    """The host benchmark's forward pass: fixed logits, no model (never auto's choice)."""

    name = "host_bench_noop"

    @dataclass
    class Config:
        name: str = "host_bench_noop"

    def __init__(self, config, runner):
        super().__init__(config, runner)
        generator = torch.Generator().manual_seed(0)
        rows = max(runner.config.max_num_seqs, 1)
        self.logits = torch.randn(rows, runner.hf_config.vocab_size, generator=generator).to(runner.device)

    def __call__(self, input_ids, positions, meta):
        return self.logits[:len(meta.query_lens)]


def register_noop_forward():
    """Make `forward=host_bench_noop` composable in this process (before the first LLM is built)."""
    from nvllm import registry

    if NoopForward.name not in registry.names("forward"):
        registry.register("forward", NoopForward, origin="nvllm.tools.host_bench")


class PhaseTimer:
    """Seconds spent in wrapped callables, per phase."""

    def __init__(self):
        self.seconds = dict.fromkeys(("schedule", "launch", "forward", "sample", "postprocess"), 0.0)

    def wrap(self, fn, phase: str):
        seconds, clock = self.seconds, time.perf_counter

        def timed(*args, **kwargs):
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[phase] += clock() - start
        return timed

    def reset(self):
        for phase in self.seconds:
            self.seconds[phase] = 0.0


class _TimedSampler:
    """The runner's sampler, its calls timed (the rest of it as it was)."""

    def __init__(self, sampler, timer: PhaseTimer):
        self._sampler, self._timed = sampler, timer.wrap(sampler, "sample")

    def __call__(self, *args):
        return self._timed(*args)

    def __getattr__(self, name):
        return getattr(self._sampler, name)


def instrument(engine) -> PhaseTimer:
    timer = PhaseTimer()
    scheduler, runner = engine.scheduler, engine.executor
    for obj, method, phase in ((scheduler, "schedule", "schedule"), (scheduler, "update", "postprocess"),
                               (scheduler, "commit", "postprocess"), (runner, "execute", "launch"),
                               (runner, "launch", "launch"), (runner, "forward", "forward"),
                               (runner, "sample", "sample"), (runner, "collect", "sample")):
        setattr(obj, method, timer.wrap(getattr(obj, method), phase))
    if not engine.config.async_scheduling:  # (under overlap the runner's sample holds the sampler's time)
        runner.sampler = _TimedSampler(runner.sampler, timer)
    return timer


def make_checkpoint(directory: str) -> str:
    """A tiny random Llama (2 layers, vocabulary 512) with room for 4096 positions."""
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("llama", directory, preset="tiny", seed=0, max_position_embeddings=4096)


def measure(path: str, batch: int, sampling: str, steps: int, warmup: int, overrides: dict) -> dict:
    """Per-step milliseconds of each phase (median over `steps` decode steps of `batch` sequences)."""
    from nvllm import LLM, SamplingParams

    rng = random.Random(0)
    prompts = [[rng.randint(0, 511) for _ in range(rng.randint(100, 1024))] for _ in range(batch)]
    params = SamplingParams(temperature=0.0 if sampling == "greedy" else 0.6, ignore_eos=True,
                            max_tokens=warmup + steps + 64)
    blocks = batch * -(-(1024 + params.max_tokens) // 256) + 8
    options = dict(forward=NoopForward.name, device="cpu", max_num_seqs=max(batch, 1), max_model_len=4096,
                   kv_cache={"block_size": 256, "num_blocks": blocks}, **overrides)
    with LLM(path, **options) as llm:
        engine = llm.engine
        for i, prompt in enumerate(prompts):
            engine.add_request(str(i), prompt, params, stream=False)
        while any(s.num_computed_tokens < s.num_prompt_tokens for s in [*engine.scheduler.waiting, *engine.scheduler.running]):
            engine.step()  # the prefills (and the async pipeline filling up)
        timer = instrument(engine)
        for _ in range(warmup):
            engine.step()
        timer.reset()
        step_ms, phases = [], {p: [] for p in PHASES}
        for _ in range(steps):
            before = dict(timer.seconds)
            start = time.perf_counter()
            engine.step()
            total = time.perf_counter() - start
            d = {k: timer.seconds[k] - before[k] for k in timer.seconds}
            step_ms.append(total * 1e3)
            # sync: the sampler runs inside execute ("launch"); overlap: in the runner's sample
            inside = 0.0 if engine.config.async_scheduling else d["sample"]
            split = dict(schedule=d["schedule"], pack=d["launch"] - d["forward"] - inside, forward=d["forward"],
                         sample=d["sample"], postprocess=d["postprocess"])
            split["deltas"] = total - sum(split.values())
            for p in PHASES:
                phases[p].append(split[p] * 1e3)
        decoding = sum(1 for s in engine.scheduler.running if s.num_computed_tokens >= s.num_prompt_tokens)
        engine.abort_requests([str(i) for i in range(batch)], quiet=True)
        engine.step()
        effective = {k: str(getattr(engine.config, k)) for k in ("forward", "attention", "scheduler")}
        effective["async_scheduling"] = str(getattr(engine.config, "async_scheduling", None))
    return dict(batch=batch, sampling=sampling, steps=steps, decoding=decoding, step_ms=statistics.median(step_ms),
                step_ms_min=min(step_ms), step_ms_mean=statistics.fmean(step_ms),
                phases_ms={p: statistics.median(v) for p, v in phases.items()}, effective=effective)


def print_table(rows: list[dict]):
    print()
    print(f"{'batch':>5} {'sampling':8} {'step ms':>8} {'min':>7} " + " ".join(f"{p:>11}" for p in PHASES))
    for r in rows:
        print(f"{r['batch']:>5} {r['sampling']:8} {r['step_ms']:8.3f} {r['step_ms_min']:7.3f} "
              + " ".join(f"{r['phases_ms'][p]:11.3f}" for p in PHASES))
    print("ms per decode step: medians, and the fastest step (the least disturbed on a busy machine); forward is a "
          "no-op returning fixed logits (nvllm/tools/host_bench.py). pack: the runner's execute (or launch) less forward "
          "and sampling; sample: the sampler (overlap: the runner's sample and collect); postprocess: the scheduler's "
          "update (and commit); deltas: the step less every other phase.")


def _overrides(parser, items: list[str]) -> dict:
    """KEY=VALUE items as LLM()'s nested overrides: kv_cache.block_size=16 -> {"kv_cache": {"block_size": 16}}."""
    import yaml  # comes with hydra; parses 64, true, chunked into int, bool, str

    nested = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected KEY=VALUE, got {item!r}")
        *groups, leaf = key.strip().split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = yaml.safe_load(value)
    return nested


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.bench --workload host", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="host", choices=["host"])
    parser.add_argument("--batch-sizes", default="1,64,256", help="sequences decoding together (comma-separated)")
    parser.add_argument("--sampling", default="greedy,sampled", help="greedy (temperature 0) and/or sampled (0.6)")
    parser.add_argument("--steps", type=int, default=200, help="timed decode steps per batch")
    parser.add_argument("--warmup", type=int, default=20, help="decode steps before the clock starts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: host work is one thread)")
    parser.add_argument("--nvllm", action="append", default=[], metavar="KEY=VALUE",
                        help="engine override, as for LLM(): async_scheduling=true, scheduler=chunked, ...")
    parser.add_argument("--out", default="host_bench.json", help="where the JSON results go")
    args = parser.parse_args(argv)
    overrides = _overrides(parser, args.nvllm)
    torch.set_num_threads(args.threads)
    register_noop_forward()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nvllm-host-bench-") as tmp:
        path = make_checkpoint(tmp)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            for sampling in [s.strip() for s in args.sampling.split(",")]:
                if sampling not in ("greedy", "sampled"):
                    parser.error(f"--sampling takes greedy and/or sampled, not {sampling!r}")
                row = measure(path, batch, sampling, args.steps, args.warmup, overrides)
                print(f"host: batch {batch:>4} {sampling:8} {row['step_ms']:.3f} ms/step", flush=True)
                rows.append(row)
    print_table(rows)
    report = dict(argv=sys.argv[1:], threads=args.threads, cpu_count=os.cpu_count(), overrides=overrides,
                  load=os.getloadavg(), note="forward replaced by a no-op; ms per decode step (medians)", rows=rows)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0
