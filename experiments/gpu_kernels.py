"""The Triton weight-only matmuls (nvllm/kernels/triton_quantized.py) and fused MoE
(nvllm/kernels/triton_moe.py) on a GPU: first their tests on CUDA (pytest -m gpu on
tests/kernels/test_triton_*.py: float32 and bfloat16, and the MoE layer captured in a CUDA graph), then
greedy float32 parity through the engine with transformers on the same device, TF32 off:

- quantization=int8 and int4, forward=cudagraph, on a checkpoint with the Qwen3-0.6B shape (2
  layers, a 10,000-token vocabulary, random weights), against transformers running the same
  checkpoint with each linear weight round-tripped through the format (quantized, then dequantized);
- model=qwen3_moe, forward=cudagraph and eager (which tells a kernel's error from the capture's),
  on a random checkpoint of a small Qwen3-MoE (32 experts, 4 chosen per token, a dense first
  layer), against transformers.

A cell that cannot run here records the engine's refusal. Last, each kernel timed against the
torch code it replaces (timing.json: bfloat16, a 4096 x 4096 layer at 1, 16 and 256 rows, and a
Qwen3-30B-A3B MoE layer's shape at 1, 16 and 256 tokens). Writes tests.log, then parity.json after
every cell (so a time cap keeps what finished), prints a table last. Run by gpu_check.py's
`kernels` part.

    python experiments/gpu_kernels.py --out DIR [--tests tests/kernels/test_triton_*.py]   # on a CUDA machine
    python experiments/gpu_kernels.py --smoke --out DIR   # CPU, tiny models, quantized cells eager: checks it
"""
import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_parity import hf_greedy, print_table, run_cell

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# a small Qwen3-MoE on a GPU: experts wide enough that the grouped matmuls run several blocks
MOE_SHAPE = dict(vocab_size=10000, hidden_size=512, intermediate_size=1024, moe_intermediate_size=256,
                 num_experts=32, num_experts_per_tok=4, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=64)


def round_tripped(checkpoint: Path, fmt: str, out: Path) -> str:
    """A copy of `checkpoint` whose linear weights are what quantization=`fmt` stands for."""
    from safetensors.torch import load_file

    from nvllm.models.layers.packed import dequantize, quantize_int4, quantize_int8
    from nvllm.testing.quantization import with_weights

    quantize = {"int8": quantize_int8, "int4": quantize_int4}[fmt]
    weights = {name: dequantize(**{"mins": None, **quantize(w)})
               for name, w in load_file(str(checkpoint / "model.safetensors")).items()
               if name.endswith(".weight") and name.split(".")[-2] in LINEAR}
    return with_weights(str(checkpoint), out, weights)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--tests", nargs="*", default=[], help="the kernels' test files (gpu_check.py names them)")
    parser.add_argument("--tests-budget-s", type=float, default=35, help="time cap of the kernel tests")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random models")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_tests(args, out)] if args.tests else []
    (out / "parity.json").write_text(json.dumps(results, indent=2))

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from nvllm import SamplingParams
    from nvllm.tools.checkpoint import make_random_checkpoint

    device = "cpu" if args.smoke else "cuda"
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    rng = random.Random(0)
    vocab = 500 if args.smoke else 10000
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 120))] for _ in range(args.prompts)]
    attention = "sdpa" if args.smoke else "triton"

    dense = out / "ckpt-dense"
    if not (dense / "config.json").exists():
        make_random_checkpoint("qwen3", str(dense), preset="tiny" if args.smoke else "qwen3-0.6b", seed=0,
                               **({} if args.smoke else dict(num_hidden_layers=2, vocab_size=vocab)))
    for fmt in ("int8", "int4"):
        want = hf_greedy(round_tripped(dense, fmt, out / f"ckpt-{fmt}-dequantized"), prompts, args.max_tokens, device)
        forward = "eager" if args.smoke else "cudagraph"  # a CPU has no graphs: the smoke checks the reference
        results.append(run_cell(f"quantization={fmt} forward={forward}", str(dense), prompts, want, greedy,
                                device=device, attention=attention, forward=forward, quantization=fmt))
        (out / "parity.json").write_text(json.dumps(results, indent=2))

    moe = out / "ckpt-moe"
    if not (moe / "config.json").exists():
        make_random_checkpoint("qwen3_moe", str(moe), preset="tiny", seed=0, **({} if args.smoke else MOE_SHAPE))
    want = hf_greedy(str(moe), prompts, args.max_tokens, device)
    for forward in ("cudagraph", "eager"):
        results.append(run_cell(f"qwen3_moe forward={forward}", str(moe), prompts, want, greedy, device=device,
                                attention=attention, forward=forward))
        (out / "parity.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    timing = time_kernels(device, args.smoke)
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    for t in timing:
        what = f"{t['op']}, {t['rows']} rows"
        print(f"{what:<40} torch {t['torch_ms']:.3f} ms, triton {t['triton_ms']:.3f} ms")


def median_ms(fn, device: str, reps: int) -> float:
    """Wall time of one call (launches included), the median of `reps` after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def time_kernels(device: str, smoke: bool) -> list[dict]:
    """Each kernel against the torch code it replaces, in bfloat16 (float32 on a CPU): the weight-only
    matmuls against dequantize + F.linear on a 4096 x 4096 layer, the fused MoE against the MoE
    layer's torch code at a Qwen3-30B-A3B layer's shape (128 experts, 8 chosen, hidden 2048, width 768)."""
    from nvllm.kernels.triton_quantized import linear_packed
    from nvllm.models.layers.moe import FusedMoE, route
    from nvllm.models.layers.packed import dequantize, quantize_int4, quantize_int8

    dtype, reps = (torch.float32, 2) if smoke else (torch.bfloat16, 20)
    timing = []
    n = k = 64 if smoke else 4096
    weight = torch.randn(n, k, device=device) * 0.02
    for fmt, quantize in (("int8", quantize_int8), ("int4", quantize_int4)):
        packed = quantize(weight)
        q, d, m = packed["qweight"], packed["scales"], packed.get("mins")
        for rows in (1, 16, 256):
            x = torch.randn(rows, k, device=device, dtype=dtype)
            timing.append(dict(op=f"{fmt} linear {n}x{k}", rows=rows,
                               torch_ms=median_ms(lambda: F.linear(x, dequantize(q, d, m, dtype)), device, reps),
                               triton_ms=median_ms(lambda: linear_packed(x, q, d, m), device, reps)))
    experts, top_k, hidden, width = (8, 2, 64, 32) if smoke else (128, 8, 2048, 768)
    layer = FusedMoE(experts, top_k, hidden, width, renormalize=True).to(device, dtype)
    for param in layer.parameters():
        param.normal_(0, 0.02)
    for tokens in (1, 16, 256):
        x = torch.randn(tokens, hidden, device=device, dtype=dtype)
        scores, chosen = route(layer.gate(x), top_k, True)
        scores = scores.to(dtype)
        timing.append(dict(op=f"moe {experts} experts top-{top_k}", rows=tokens,
                           torch_ms=median_ms(lambda: layer.experts_torch(x, scores, chosen), device, reps),
                           triton_ms=median_ms(lambda: layer.experts_triton(x, scores, chosen), device, reps)))
    return timing


def run_tests(args, out: Path) -> dict:
    """The kernels' tests on CUDA, capped; their summary line (the log: tests.log)."""
    start = time.perf_counter()
    with (out / "tests.log").open("w") as log:
        try:
            command = [sys.executable, "-m", "pytest", *args.tests, "-m", "gpu", "-q", "-p", "no:cacheprovider"]
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=args.tests_budget_s)
            status = "ok" if proc.returncode in (0, 5) else f"exit {proc.returncode}"  # 5: none collected
        except subprocess.TimeoutExpired:
            status = f"timed out at {args.tests_budget_s:.0f} s"
    lines = [line for line in (out / "tests.log").read_text().splitlines() if line.strip()]
    summary = dict(tests=status, seconds=round(time.perf_counter() - start, 1), summary=lines[-1] if lines else "")
    print(f"kernel tests: {status}: {summary['summary']}", flush=True)
    return summary


if __name__ == "__main__":
    main()
