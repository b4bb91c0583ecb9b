"""The host benchmark's decode step, for two checkouts of nvllm, alternating in one sitting.

    python experiments/host_compare.py --before /path/to/old/checkout --after . --rounds 3 --out host_compare.json

Each round runs every (checkout, batch, sampling) cell once, in a fresh process with PYTHONPATH
pointing at that checkout (both need nvllm/tools/host_bench.py, whose no-op forward pass and tiny
checkpoint they share), one cell after another, the two checkouts alternating. A cell decodes its
batch to steady state, then times --steps decode steps one by one with one torch thread. On a
machine others are using, a step's median grows with their load while the fastest step (the
least disturbed) stays put: the table gives both, and the ratio after/before of each, per round
and the median over rounds."""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CELL = r"""
import json, random, sys, tempfile, time
import torch
torch.set_num_threads(1)
from nvllm.tools import host_bench
batch, sampling, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
host_bench.register_noop_forward()
from nvllm import LLM, SamplingParams
path = host_bench.make_checkpoint(tempfile.mkdtemp(prefix="nvllm-host-compare-"))
rng = random.Random(0)
prompts = [[rng.randint(0, 511) for _ in range(rng.randint(100, 1024))] for _ in range(batch)]
params = SamplingParams(temperature=0.0 if sampling == "greedy" else 0.6, ignore_eos=True, max_tokens=steps + 100)
blocks = batch * -(-(1024 + params.max_tokens) // 256) + 8
with LLM(path, forward="host_bench_noop", device="cpu", max_num_seqs=batch, max_model_len=4096,
         kv_cache={"block_size": 256, "num_blocks": blocks}) as llm:
    engine = llm.engine
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params, stream=False)
    for _ in range(40):
        engine.step()  # the prefills, then a warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
print("RESULT " + json.dumps(dict(min_ms=min(times) * 1e3, median_ms=sorted(times)[len(times) // 2] * 1e3)))
"""


def run_cell(tree: Path, batch: int, sampling: str, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    proc = subprocess.run([sys.executable, "-c", CELL, str(batch), sampling, str(steps)], env=env, cwd="/",
                          capture_output=True, text=True, timeout=1200)
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{tree} batch {batch} {sampling} failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[7:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout of nvllm (its root)")
    parser.add_argument("--after", required=True, help="another checkout of nvllm (its root)")
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--sampling", default="greedy,sampled")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="host_compare.json")
    args = parser.parse_args()
    cells = [(int(b), s) for b in args.batch_sizes.split(",") for s in args.sampling.split(",")]
    trees = {"before": Path(args.before), "after": Path(args.after)}
    results = []
    for round_ in range(args.rounds):
        for batch, sampling in cells:
            for name in (("before", "after") if round_ % 2 == 0 else ("after", "before")):
                r = dict(round=round_, tree=name, batch=batch, sampling=sampling, load=os.getloadavg()[0],
                         **run_cell(trees[name], batch, sampling, args.steps))
                print(json.dumps(r), flush=True)
                results.append(r)
                Path(args.out).write_text(json.dumps(dict(argv=sys.argv[1:], results=results), indent=2))
    print(f"\n{'batch':>5} {'sampling':8} {'before min':>10} {'after min':>9} {'ratio':>6} "
          f"{'before med':>10} {'after med':>9} {'ratio':>6}   (ms per decode step; ratios: median over rounds)")
    for batch, sampling in cells:
        def cell(tree, key):
            return [r[key] for r in results if (r["tree"], r["batch"], r["sampling"]) == (tree, batch, sampling)]
        ratio = {k: statistics.median(a / b for a, b in zip(cell("after", k), cell("before", k)))
                 for k in ("min_ms", "median_ms")}
        print(f"{batch:>5} {sampling:8} {min(cell('before', 'min_ms')):10.3f} {min(cell('after', 'min_ms')):9.3f} "
              f"{ratio['min_ms']:6.2f} {statistics.median(cell('before', 'median_ms')):10.3f} "
              f"{statistics.median(cell('after', 'median_ms')):9.3f} {ratio['median_ms']:6.2f}")


if __name__ == "__main__":
    main()
