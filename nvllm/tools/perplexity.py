"""`python -m nvllm.tools.perplexity --text FILE [overrides ...]`: what a weight format costs in
quality, as llama.cpp's `perplexity` tool measures it. The text is cut into chunks of --ctx tokens
(the first of each replaced by BOS where the tokenizer starts a text with one); each chunk runs as one prefill
and the second half of its tokens is scored. For the run the overrides describe (the same as
`python -m nvllm.run` takes, e.g. quantization=int8) and for the float32 model (the same overrides
with quantization=none dtype=float32): the perplexity, the mean KL divergence of the run's next-token
distribution from the float32 model's, and how often both put the same token first (top-1
agreement). `--json FILE` writes the numbers too."""
import argparse
import json
import math
import sys
import time

import torch


def engine_for(overrides: list[str], ctx: int):
    """The engine the overrides describe, with a KV cache of just the blocks one chunk needs."""
    from hydra import compose, initialize_config_module

    from nvllm.config import Config, prepare, setup
    from nvllm.engine.llm_engine import LLMEngine

    setup()
    if not any(o.startswith("kv_cache.num_blocks=") for o in overrides):
        overrides = [*overrides, f"kv_cache.num_blocks={-(-ctx // 16) + 1}", "kv_cache.block_size=16"]
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"max_num_batched_tokens={max(ctx, 4096)}"])
    return LLMEngine(prepare(Config.from_cfg(cfg)))  # every auto, the checkpoint read once


def chunks(engine, text: str, ctx: int) -> list[list[int]]:
    tokens = engine.tokenizer.encode(text)
    if len(tokens) < ctx:
        raise SystemExit(f"--text holds {len(tokens)} tokens, fewer than one chunk (--ctx {ctx}): use a longer text "
                         f"or a smaller --ctx")
    bos = engine.tokenizer.bos_token_id
    out = [tokens[i:i + ctx] for i in range(0, len(tokens) - ctx + 1, ctx)]
    if bos is None or tokens[0] != bos:  # the tokenizer adds no BOS (SmolLM2's): neither does a chunk
        return out
    return [[bos, *c[1:]] for c in out]


@torch.inference_mode()
def scored_logprobs(engine, chunk: list[int]) -> torch.Tensor:
    """Log-probabilities (float64) of the next token at each scored position of `chunk` (its second half)."""
    runner = engine.executor
    table = list(range(-(-len(chunk) // runner.block_size)))
    logits = runner.run_inputs([(chunk, 0, table)], [len(chunk)])  # every row scored, as a verify step scores drafts
    return torch.log_softmax(logits[len(chunk) // 2:-1].double(), dim=-1)


def measure(overrides: list[str], text: str, ctx: int, log=print) -> dict:
    reference = [o for o in overrides if not o.startswith(("quantization", "dtype="))]
    reference += ["quantization=none", "dtype=float32"]
    results, base = {}, []
    for role, run in (("float32", reference), ("run", overrides)):
        engine = engine_for(run, ctx)
        try:
            started = time.perf_counter()
            pieces = chunks(engine, text, ctx)
            nll, kl, agree, count = 0.0, 0.0, 0, 0
            for i, chunk in enumerate(pieces):
                logprobs = scored_logprobs(engine, chunk)
                targets = torch.tensor(chunk[len(chunk) // 2 + 1:])
                nll -= float(logprobs.gather(1, targets[:, None]).sum())
                count += len(targets)
                if role == "float32":
                    base.append(logprobs)
                else:
                    ref = base[i]
                    kl += float((ref.exp() * (ref - logprobs)).sum())
                    agree += int((ref.argmax(-1) == logprobs.argmax(-1)).sum())
            c = engine.config
            results[role] = {
                "overrides": run, "quantization": c.quantization.name,
                "activations": getattr(c.quantization, "activations", "float"), "dtype": c.dtype, "forward": c.forward.name,
                "weight_bytes": engine.executor.weight_bytes(), "perplexity": math.exp(nll / count),
                "tokens_scored": count, "chunks": len(pieces), "seconds": round(time.perf_counter() - started, 1)}
            if role == "run":
                results[role].update(mean_kl_divergence=kl / count, top1_agreement=agree / count)
            log(f"{role}: quantization={c.quantization.name} dtype={c.dtype} forward={c.forward.name}: "
                f"perplexity {results[role]['perplexity']:.4f} over {count} tokens")
        finally:
            engine.close()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.perplexity", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--text", required=True, help="a plain-text file (experiments/data/alice-chapter1.txt)")
    parser.add_argument("--ctx", type=int, default=512, help="tokens per chunk; the second half of each is scored")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("overrides", nargs="*", help="the run's overrides, as python -m nvllm.run takes them")
    args = parser.parse_args(argv)
    if args.ctx < 4:
        parser.error("--ctx must be at least 4")
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    results = measure(args.overrides, text, args.ctx, log=lambda m: print(m, file=sys.stderr))
    run, ref = results["run"], results["float32"]
    print(f"{' '.join(args.overrides) or 'defaults'}: perplexity {run['perplexity']:.4f} (float32 {ref['perplexity']:.4f}, "
          f"{100 * (run['perplexity'] / ref['perplexity'] - 1):+.2f} %), mean KL divergence {run['mean_kl_divergence']:.6f}, "
          f"top-1 agreement {100 * run['top1_agreement']:.2f} %, over {run['tokens_scored']} tokens "
          f"({run['chunks']} chunks of {args.ctx}); weights {run['weight_bytes'] / 2**20:.1f} MiB "
          f"(float32 {ref['weight_bytes'] / 2**20:.1f} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"text": args.text, "ctx": args.ctx, **results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
