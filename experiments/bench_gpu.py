"""nano-vllm's benchmark, reproduced exactly, for nvllm's switches and for transformers.

The workload is nano-vllm's bench.py: `random.seed(0)`; 256 prompts of randint(100, 1024) token
ids, each randint(0, 10000); then one max_tokens=randint(100, 1024) per request (133,966 output
tokens); temperature 0.6, ignore_eos; one warm-up generate first; throughput = output tokens /
wall time. The checkpoint is a random-weight Qwen3-0.6B-shape one (bf16 on CUDA, by `auto`).
Each configuration runs in a fresh process under its own time cap; a run that hits the cap
reports what it finished by then (a lower bound). Writes bench_gpu.json, prints a table last.

    python experiments/bench_gpu.py --out DIR                       # on a CUDA machine
    python experiments/bench_gpu.py --out DIR --configs eager,sdpa  # some of them
    python experiments/bench_gpu.py --smoke --out DIR               # CPU, tiny model: checks the script
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name -> engine overrides on top of the defaults; the most telling first (a cap may cut the rest)
    "defaults": {},
    "eager": dict(cudagraph="false"),
    "sdpa": dict(attention="sdpa"),
    "compile": dict(compile=True),
    "flash_attn": dict(attention="flash_attn"),
    "triton": dict(attention="triton"),
    "cudagraph": dict(cudagraph="true"),
}
# compile is proved on the CPU by gpu_parity --smoke: compiling again here would take the cap
SMOKE_CONFIGS = {"defaults": {}, "sdpa": dict(attention="sdpa")}
NANO_VLLM_OUTPUT_TOKENS = 133_966


def workload(num_seqs: int = 256, min_len: int = 100, max_len: int = 1024, max_token_id: int = 10000):
    """nano-vllm's bench.py, draw for draw: prompts first, then every request's max_tokens."""
    rng = random.Random(0)  # random.seed(0) + random.randint, without touching the global state
    prompts = [[rng.randint(0, max_token_id) for _ in range(rng.randint(min_len, max_len))] for _ in range(num_seqs)]
    max_tokens = [rng.randint(min_len, max_len) for _ in range(num_seqs)]
    return prompts, max_tokens


def ensure_checkpoint(path: Path, smoke: bool) -> Path:
    """The random-weight checkpoint the benchmark runs (tiny for --smoke), written once; it
    appears whole or not at all (a part cut off by its cap leaves no half-written one)."""
    from nvllm.tools.checkpoint import make_random_checkpoint

    if not (path / "config.json").exists():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make_random_checkpoint("qwen3", str(partial), preset="tiny" if smoke else "qwen3-0.6b", seed=0)
        partial.rename(path)
    return path


def _sizes(args):
    return (4, 4, 12, 500) if args.smoke else (args.num_seqs, 100, args.max_len, 10000)


def run_one(args):
    """One configuration, stepping the engine itself so that a progress line (tokens finished so
    far) is printed every second: the parent reads the last one if the time cap ends the run."""
    from nvllm import LLM, SamplingParams

    overrides = {**(SMOKE_CONFIGS if args.smoke else CONFIGS)[args.run_one], **(dict(device="cpu") if args.smoke else {})}
    num_seqs, min_len, max_len, max_id = _sizes(args)
    prompts, max_tokens = workload(num_seqs, min_len, max_len, max_id)
    start = time.perf_counter()
    with LLM(args.checkpoint, **overrides) as llm:
        setup = time.perf_counter() - start
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=16), use_tqdm=False)  # nano-vllm's warm-up
        engine = llm.engine
        config = engine.config
        effective = dict(device=config.device, dtype=config.dtype, compile=config.compile, cudagraph=config.cudagraph,
                         forward=config.forward.name, forward_auto=config.forward_choice,
                         attention=type(engine.executor.attention).name, attention_auto=config.attention_choice,
                         kv_cache_blocks=engine.kv_cache.num_blocks)
        print("SETUP " + json.dumps(dict(setup_s=setup, effective=effective)), flush=True)
        start = last = time.perf_counter()
        for i, (p, n) in enumerate(zip(prompts, max_tokens)):  # text decoded once at the end, as generate does
            engine.add_request(str(i), p, SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=n), stream=False)
        tokens = 0
        while engine.has_unfinished_requests():
            tokens += sum(len(d.new_token_ids) for d in engine.step())
            if time.perf_counter() - last > 1:
                last = time.perf_counter()
                print(f"PROGRESS {json.dumps(dict(output_tokens=tokens, wall_s=last - start))}", flush=True)
        wall = time.perf_counter() - start
        preemptions = engine.scheduler.num_preemptions
    return dict(output_tokens=tokens, wall_s=wall, tok_s=tokens / wall, setup_s=setup, effective=effective,
                preemptions=preemptions)


class _TimeCap:
    """A transformers stopping criterion: stop every row once `seconds` have passed."""

    def __init__(self, seconds: float):
        self.deadline, self.steps, self.hit = time.perf_counter() + seconds, 0, False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.steps += 1
        self.hit = self.hit or time.perf_counter() > self.deadline
        return torch.full((input_ids.shape[0],), self.hit, dtype=torch.bool, device=input_ids.device)


def run_hf(args):
    """transformers `generate` on the same requests, in one left-padded batch, sampled at 0.6;
    each request is credited with min(steps run, its max_tokens). Stops at the time cap: then
    the number is a lower bound (generate did not finish)."""
    import torch
    from transformers import AutoModelForCausalLM, StoppingCriteriaList

    device = "cpu" if args.smoke else "cuda"
    num_seqs, min_len, max_len, max_id = _sizes(args)
    prompts, max_tokens = workload(num_seqs, min_len, max_len, max_id)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32 if args.smoke else torch.bfloat16)
    model = model.to(device).eval()
    setup = time.perf_counter() - start
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    cap = _TimeCap(args.budget_s)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(max_tokens), do_sample=True,
                       temperature=0.6, top_k=None, top_p=None, eos_token_id=None, pad_token_id=0,
                       stopping_criteria=StoppingCriteriaList([cap]))
    wall = time.perf_counter() - start
    tokens = sum(min(cap.steps, n) for n in max_tokens)
    return dict(output_tokens=tokens, wall_s=wall, tok_s=tokens / wall, setup_s=setup, finished=not cap.hit,
                lower_bound=cap.hit, batch=len(prompts), padding="left")


def spawn(args, checkpoint: Path, name: str, hf: bool = False) -> dict:
    """One configuration in a fresh process, capped at --budget-s (plus its set-up)."""
    cmd = [sys.executable, __file__, "--checkpoint", str(checkpoint), "--num-seqs", str(args.num_seqs),
           "--max-len", str(args.max_len), "--budget-s", str(args.budget_s)]
    cmd += ["--hf"] if hf else ["--run-one", name]
    cmd += ["--smoke"] if args.smoke else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=args.budget_s + args.setup_budget_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        timed_out = True
    lines = out.splitlines()
    result = next((json.loads(line[7:]) for line in lines if line.startswith("RESULT ")), None)
    if result is not None:
        return dict(config=name, **result)
    setup = next((json.loads(line[6:]) for line in lines if line.startswith("SETUP ")), {})
    progress = [json.loads(line[9:]) for line in lines if line.startswith("PROGRESS ")]
    if timed_out and progress:  # what finished before the cap: a lower bound
        p = progress[-1]
        return dict(config=name, output_tokens=p["output_tokens"], wall_s=p["wall_s"],
                    tok_s=p["output_tokens"] / p["wall_s"] if p["wall_s"] else 0.0, lower_bound=True, **setup)
    reason = f"timed out after {args.budget_s + args.setup_budget_s} s" if timed_out else (err.strip().splitlines() or ["?"])[-1]
    return dict(config=name, error=reason, stderr=err[-3000:], **setup)


def table(results: list[dict]) -> str:
    base = next((r["tok_s"] for r in results if r["config"] == "eager" and "tok_s" in r), None)
    rows = [f"{'config':<12} {'attention':<10} {'forward':<10} {'output tokens':>13} {'wall s':>7} {'tok/s':>9} {'vs eager':>8}"]
    for r in results:
        eff = r.get("effective", {})
        head = f"{r['config']:<12} {eff.get('attention', '-'):<10} {eff.get('forward', '-'):<10}"
        if "error" in r:
            rows.append(f"{head} failed: {r['error'][:90]}")
            continue
        ratio = f"{r['tok_s'] / base:.2f}x" if base else "-"
        bound = ">=" if r.get("lower_bound") else ""
        rows.append(f"{head} {r['output_tokens']:>13} {r['wall_s']:>7.1f} {bound + format(r['tok_s'], '.0f'):>9} {ratio:>8}")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--configs", help=f"comma-separated, of: {', '.join(CONFIGS)}, hf (default: all)")
    parser.add_argument("--budget-s", type=float, default=60, help="time cap per configuration's generate")
    parser.add_argument("--setup-budget-s", type=float, default=60, help="time cap per configuration's set-up")
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random model, 4 short requests")
    parser.add_argument("--checkpoint", help="the random Qwen3-0.6B-shape checkpoint (made here if missing; "
                                             "default: OUT/ckpt)")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--hf", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one or args.hf:
        print("RESULT " + json.dumps(run_hf(args) if args.hf else run_one(args)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_checkpoint(Path(args.checkpoint) if args.checkpoint else out / "ckpt", args.smoke)
    names = args.configs.split(",") if args.configs else [*(SMOKE_CONFIGS if args.smoke else CONFIGS)]
    names = names if args.configs else names[:4] + ["hf"] + names[4:]
    results = []
    for name in names:
        print(f"bench: {name} ...", flush=True)
        results.append(spawn(args, checkpoint, name, hf=name == "hf"))
        (out / "bench_gpu.json").write_text(json.dumps(results, indent=2))  # what finished, if the caller's cap hits
    print("\n" + table(results))


if __name__ == "__main__":
    main()
