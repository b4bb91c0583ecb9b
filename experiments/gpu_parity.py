"""Greedy float32 tokens of every attention backend x cudagraph on/off x compile on/off against
transformers on the same device, TF32 off (float32 means float32). The checkpoint has the
Qwen3-0.6B shape (heads, KV heads, head_dim, vocab) with 4 layers, random weights. A cell that
cannot run here (flash_attn is 16-bit only; cudagraph on a CPU) records the engine's refusal.
Writes parity.json after every cell (so a time cap keeps what finished), prints a table last.

    python experiments/gpu_parity.py --out DIR            # on a CUDA machine
    python experiments/gpu_parity.py --smoke --out DIR    # CPU, tiny model: checks the script
"""
import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch

BACKENDS = ("sdpa", "triton", "flash_attn")
SMOKE_BACKENDS = ("sdpa", "cpu")


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int, device: str) -> list[list[int]]:
    """transformers' greedy tokens, one prompt at a time (no padding), past EOS."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            # the mask given: inferred, it would hide every prompt token equal to pad_token_id
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                                 temperature=None, top_p=None, top_k=None)
            outputs.append(out[0, len(prompt):].tolist())
    del model
    return outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random model")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from nvllm import SamplingParams
    from nvllm.tools.checkpoint import make_random_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    checkpoint = out / "ckpt-parity"
    if not (checkpoint / "config.json").exists():
        if args.smoke:
            make_random_checkpoint("qwen3", str(checkpoint), preset="tiny", seed=0)
        else:
            make_random_checkpoint("qwen3", str(checkpoint), preset="qwen3-0.6b", seed=0, num_hidden_layers=4)
    rng = random.Random(0)
    vocab = 500 if args.smoke else 10000
    shared = [rng.randint(0, vocab) for _ in range(40)]  # a shared prefix: prefix-cache hits in every cell
    prompts = [shared[:rng.randint(1, 40)] + [rng.randint(0, vocab) for _ in range(rng.randint(1, 200))]
               for _ in range(args.prompts)]
    start = time.perf_counter()
    want = hf_greedy(str(checkpoint), prompts, args.max_tokens, device)
    results = [dict(cell="transformers", seconds=time.perf_counter() - start)]
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    cells = itertools.product(SMOKE_BACKENDS if args.smoke else BACKENDS, ("false", "true"), (False, True))
    if args.smoke:  # a CPU compiles slowly: one compiled cell proves the path
        cells = [c for c in cells if not c[2] or c[0] == "cpu"]
    for attention, cudagraph, compile_ in cells:
        results.append(run_cell(f"{attention} cudagraph={cudagraph} compile={str(compile_).lower()}", str(checkpoint),
                                prompts, want, greedy, device=device, attention=attention, cudagraph=cudagraph,
                                compile=compile_))
        (out / "parity.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def run_cell(name: str, checkpoint: str, prompts, want: list[list[int]], greedy, **overrides) -> dict:
    """One engine configuration's greedy tokens (float32) against `want`: match, MISMATCH, or the
    refusal (ConfigError/ImportError: this cell's answer, not a crash) or error it raised."""
    from nvllm import LLM

    cell = dict(cell=name)
    start = time.perf_counter()
    try:
        with LLM(checkpoint, **{"dtype": "float32", "max_model_len": 512, "max_num_seqs": 16, **overrides}) as llm:
            got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
        same = sum(g == w for g, w in zip(got, want))
        cell.update(status="match" if same == len(want) else "MISMATCH", equal_prompts=same, prompts=len(want),
                    first_mismatch=next(([g, w] for g, w in zip(got, want) if g != w), None))
    except Exception as e:
        cell.update(status="refused" if type(e).__name__ in ("ConfigError", "ImportError") else "error",
                    reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    cell["seconds"] = time.perf_counter() - start
    print(f"parity: {cell['cell']}: {cell['status']} ({cell['seconds']:.0f} s)", flush=True)
    return cell


def print_table(results: list[dict]):
    """The cells (those with a status) as a table, after a blank line (gpu_check.py shows it)."""
    print(f"\n{'cell':<40} result")
    for r in results:
        if "status" in r:
            detail = f"{r['equal_prompts']}/{r['prompts']} prompts" if "equal_prompts" in r else r["reason"][:80]
            print(f"{r['cell']:<40} {r['status']}: {detail}")


if __name__ == "__main__":
    main()
