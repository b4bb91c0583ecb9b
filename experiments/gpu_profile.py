"""The device check's profiling part: profiles for forward=simulated measured on this GPU, and the
simulation checked against a measured run.

1. `python -m nvllm.tools.profile model=qwen3 model.shape=<shape>` for the Qwen3-0.6B and 8B
   shapes (random weights drawn on the GPU, the defaults' forward strategy and attention backend),
   each under --budget-s of timing: <hardware>-<shape>.json.
2. nano-vllm's benchmark (bench_gpu.py's workload, draw for draw) simulated from the 0.6B profile,
   and, where the bench part of the check ran before this one, its measured "defaults" throughput
   beside it with the error. Writes profile.json; prints a table last.

    python experiments/gpu_profile.py --out DIR [--bench DIR/bench]    # on a CUDA machine
    python experiments/gpu_profile.py --out DIR --smoke                # CPU, tiny shape: checks the script
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SHAPES = ("qwen3-0.6b", "qwen3-8b")


def simulate_bench(profile: str, smoke: bool) -> dict:
    """nano-vllm's benchmark, simulated from `profile`: output tokens over simulated seconds."""
    from bench_gpu import _sizes, workload

    from nvllm import LLM, SamplingParams

    sizes = argparse.Namespace(smoke=smoke, num_seqs=256, max_len=1024)
    num_seqs, min_len, max_len, max_id = _sizes(sizes)
    prompts, max_tokens = workload(num_seqs, min_len, max_len, max_id)
    model = {"name": "qwen3", "shape": "tiny" if smoke else "qwen3-0.6b"}
    start = time.process_time()
    with LLM(model, forward={"name": "simulated", "profile": profile}, **({"max_model_len": 64} if smoke else {})) as llm:
        params = [SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n) for n in max_tokens]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        simulated_s = llm.engine.clock.now()
        blocks = llm.engine.kv_cache.num_blocks
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return dict(output_tokens=tokens, simulated_s=simulated_s, tok_s=tokens / simulated_s, kv_cache_blocks=blocks,
                host_cpu_s=time.process_time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--bench", help="the bench part's output directory (bench_gpu.json), for the measured throughput")
    parser.add_argument("--budget-s", type=float, default=25, help="seconds of timing per shape")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = ("tiny",) if args.smoke else SHAPES
    result = {"profiles": {}}
    for shape in shapes:
        path = out / f"{'cpu' if args.smoke else 'gpu'}-qwen3-{shape}.json"
        cmd = [sys.executable, "-m", "nvllm.tools.profile", "model=qwen3", f"model.shape={shape}", "--out", str(path),
               "--budget-s", str(args.budget_s), *(["device=cpu", "max_model_len=64", "max_num_seqs=8"] if args.smoke else [])]
        print("== " + " ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout[-2000:], proc.stderr[-1500:] if proc.returncode else "", flush=True)
        if proc.returncode == 0:
            profile = json.loads(path.read_text())
            named = path.with_name(f"{profile['hardware']['name']}-qwen3-{shape}.json")
            path.rename(named)
            result["profiles"][shape] = dict(path=str(named), hardware=profile["hardware"], forward=profile["forward"],
                                             attention=profile["attention"], dtype=profile["dtype"], fit=profile["fit"],
                                             coefficients_s=profile["coefficients_s"])
    first = result["profiles"].get(shapes[0])
    if first:
        result["bench_simulated"] = simulate_bench(first["path"], args.smoke)
        measured = Path(args.bench or out.parent / "bench") / "bench_gpu.json"
        if measured.exists():
            runs = {r["config"]: r for r in json.loads(measured.read_text()) if "tok_s" in r}
            if "defaults" in runs:
                m = runs["defaults"]["tok_s"]
                result["bench_measured_tok_s"] = m
                result["bench_error"] = (result["bench_simulated"]["tok_s"] - m) / m
    (out / "profile.json").write_text(json.dumps(result, indent=2))
    print()
    for shape, p in result["profiles"].items():
        fit = p["fit"]
        print(f"profile {shape:<11} {p['hardware']['name']:<6} forward={p['forward']} attention={p['attention']} {p['dtype']}: "
              f"{fit['steps']} steps, fit error median {fit['median_abs_rel_error']:.1%}, max {fit['max_abs_rel_error']:.1%}")
    if "bench_simulated" in result:
        b = result["bench_simulated"]
        line = f"nano-vllm bench SIMULATED from the {shapes[0]} profile: {b['tok_s']:.0f} tok/s ({b['output_tokens']} tokens)"
        if "bench_measured_tok_s" in result:
            line += f"; measured {result['bench_measured_tok_s']:.0f} tok/s; error {result['bench_error']:+.1%}"
        print(line)
    return 0 if len(result["profiles"]) == len(shapes) else 1


if __name__ == "__main__":
    sys.exit(main())
