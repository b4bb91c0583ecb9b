"""GPU benchmark for the optimisation switches: nano-vllm's workload (random prompt ids below
10000, prompt and output lengths uniform in [100, max_len], seed 0, temperature 0.6, ignore_eos)
on a random-weight Qwen3-0.6B-shape checkpoint in bf16; eager vs cudagraph vs compile+cudagraph,
each in a fresh process. Writes bench_gpu.json and prints a table last.

    python experiments/bench_gpu.py --out DIR                # on a CUDA machine
    python experiments/bench_gpu.py --smoke --out DIR        # CPU, tiny model: checks the script itself
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name -> engine overrides
    "eager": dict(cudagraph="false", compile=False),
    "cudagraph": dict(cudagraph="true", compile=False),
    "compile+cudagraph": dict(cudagraph="true", compile=True),
}
SMOKE_CONFIGS = {"eager": dict(cudagraph="false", compile=False), "compile": dict(cudagraph="false", compile=True)}


def workload(num_seqs: int, max_len: int, min_len: int, max_token_id: int):
    rng = random.Random(0)
    prompts = [[rng.randrange(max_token_id) for _ in range(rng.randint(min_len, max_len))] for _ in range(num_seqs)]
    lengths = [rng.randint(min_len, max_len) for _ in range(num_seqs)]
    return prompts, lengths


def run_one(args) -> dict:
    from nvllm import LLM, SamplingParams

    overrides = (SMOKE_CONFIGS if args.smoke else CONFIGS)[args.run_one]
    device = dict(device="cpu") if args.smoke else dict(device="cuda", dtype="bfloat16")
    prompts, lengths = workload(args.num_seqs, args.max_len, args.min_len, 500 if args.smoke else 10000)
    params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in lengths]
    start = time.perf_counter()
    with LLM(args.checkpoint, max_model_len=2 * args.max_len + 64, **device, **overrides) as llm:
        setup = time.perf_counter() - start
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - start
        rejected = [o.error for o in outputs if o.error]
        if rejected:
            raise RuntimeError(f"{len(rejected)} requests rejected, e.g. {rejected[0]}")
        effective = {k: getattr(llm.engine.config, k) for k in ("device", "dtype", "compile", "cudagraph")}
    tokens = sum(len(o.token_ids) for o in outputs)
    return dict(config=args.run_one, output_tokens=tokens, wall_s=wall, tok_s=tokens / wall, setup_s=setup,
                effective=effective)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--min-len", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random model, 4 short requests")
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.num_seqs, args.max_len, args.min_len = 4, 12, 4
    if args.run_one:
        print("RESULT " + json.dumps(run_one(args)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from nvllm.tools.checkpoint import make_random_checkpoint

    checkpoint = out / "ckpt"
    if not (checkpoint / "config.json").exists():
        make_random_checkpoint("qwen3", str(checkpoint), preset="tiny" if args.smoke else "qwen3-0.6b", seed=0)
    results = []
    for name in SMOKE_CONFIGS if args.smoke else CONFIGS:
        cmd = [sys.executable, __file__, "--run-one", name, "--checkpoint", str(checkpoint),
               "--num-seqs", str(args.num_seqs), "--max-len", str(args.max_len), "--min-len", str(args.min_len)]
        proc = subprocess.run(cmd + (["--smoke"] if args.smoke else []), capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            results.append(dict(config=name, error=proc.stderr[-1500:]))
            print(f"{name} FAILED:\n{proc.stderr[-1500:]}", flush=True)
        else:
            results.append(json.loads(line[7:]))
    (out / "bench_gpu.json").write_text(json.dumps(results, indent=2))
    base = next((r["tok_s"] for r in results if r["config"] == "eager" and "tok_s" in r), None)
    print(f"\n{'config':<20} {'output tokens':>13} {'wall s':>8} {'tok/s':>9} {'vs eager':>8} {'setup s':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['config']:<20} failed (see bench_gpu.json)")
        else:
            ratio = f"{r['tok_s'] / base:.2f}x" if base else "-"
            print(f"{r['config']:<20} {r['output_tokens']:>13} {r['wall_s']:>8.1f} {r['tok_s']:>9.0f} {ratio:>8} {r['setup_s']:>8.1f}")


if __name__ == "__main__":
    main()
