"""forward=fused_cpu on a mixture of experts (nvllm/kernels/moe_step.h), two measurements on random
checkpoints of one shape written here (hidden 1024, 8 layers, 16 query and 4 KV heads, vocab 8192):
a dense Qwen3 with an MLP 3072 wide, and a Qwen3-MoE whose every layer has 32 experts 384 wide with
8 chosen per token — the same active parameters (the router's 32 x 1024 a layer aside).

    python experiments/moe_fused_decode.py single --rounds 6 --steps 64 > single.jsonl
    python experiments/moe_fused_decode.py reads --seqs 64 --steps 4 > reads.jsonl
    python experiments/moe_fused_decode.py single --dtype bfloat16 > single-bf16.jsonl   # 16-bit weights
    python experiments/moe_fused_decode.py single --models moe --quantization none,int8,int4 > single-q.jsonl

`single`: single-stream decode tokens/s of the dense and the MoE model (`--models`), each in every
weight format of `--quantization` (int8, int4: router and experts packed too), all loaded in one
process and timed in turn, the order of a round reversed every other round (`--rounds` rounds,
`--steps` decode steps each after a prefill of 16 tokens).
`reads`: decode steps of `--seqs` sequences through the MoE model with the C step's expert counters
on (fused_cpu.py `count_experts`); for each step and layer, the bytes of expert weights the C step
read against the union of the experts chosen, which the torch layer's `route` gives on the same
step's inputs (forward=eager's modules, run beside it). One JSON line per measurement on stdout."""
import argparse
import json
import random
import time
from pathlib import Path

from nvllm import LLM, SamplingParams  # before torch: nvllm sets how its OpenMP threads wait as torch loads

SHAPE = dict(vocab_size=8192, hidden_size=1024, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
             head_dim=64, max_position_embeddings=2048, tie_word_embeddings=False)
DENSE = dict(intermediate_size=3072)
MOE = dict(intermediate_size=3072, num_experts=32, num_experts_per_tok=8, moe_intermediate_size=384,
           norm_topk_prob=True, mlp_only_layers=[], decoder_sparse_step=1)


def checkpoints(root: Path) -> dict[str, str]:
    """The two random checkpoints, written once under `root`."""
    from nvllm.tools.checkpoint import make_random_checkpoint

    paths = {}
    for name, arch, fields in (("dense", "qwen3", DENSE), ("moe", "qwen3_moe", MOE)):
        out = root / name
        if not (out / "config.json").is_file():
            make_random_checkpoint(arch, str(out), preset="tiny", seed=0, **SHAPE, **fields)
        paths[name] = str(out)
    return paths


def load() -> str:
    return open("/proc/loadavg").read().strip()


def open_llm(path: str, dtype: str, max_seqs: int = 1, quantization: str = "none") -> LLM:
    return LLM(path, forward="fused_cpu", dtype=dtype, kv_cache={"block_size": 16, "num_blocks": max(64, 8 * max_seqs)},
               max_model_len=512, max_num_seqs=max_seqs, max_num_batched_tokens=4096, quantization=quantization)


def decode_tok_s(llm: LLM, steps: int, rng: random.Random) -> float:
    """One sequence: its prefill, then `steps` decode steps timed."""
    engine = llm.engine
    engine.add_request(str(rng.random()), [rng.randrange(8192) for _ in range(16)],
                       SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True))
    engine.step()  # the prefill
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    elapsed = time.perf_counter() - start
    assert not engine.has_unfinished_requests()
    return steps / elapsed


def single(args, paths):
    llms = {(name, fmt): open_llm(paths[name], args.dtype, quantization=fmt)
            for name in args.models.split(",") for fmt in args.quantization.split(",")}
    rng = random.Random(0)
    for llm in llms.values():
        decode_tok_s(llm, 8, rng)  # warm-up
    for r in range(args.rounds):
        for (name, fmt), llm in list(llms.items())[::1 if r % 2 == 0 else -1]:  # in order, then reversed, ...
            before = load()
            tok_s = decode_tok_s(llm, args.steps, rng)
            print(json.dumps({"round": r, "model": name, "dtype": args.dtype, "quantization": fmt,
                              "decode_tok_s": round(tok_s, 2), "steps": args.steps,
                              "weight_bytes": llm.engine.executor.weight_bytes(),
                              "loadavg_before": before, "loadavg_after": load()}), flush=True)
    for llm in llms.values():
        llm.close()


def reads(args, paths):
    import torch

    from nvllm.engine.model_runner import step_inputs
    from nvllm.forward.eager import EagerForward
    from nvllm.models.layers.moe import FusedMoE, route

    rng = random.Random(1)
    with open_llm(paths["moe"], args.dtype, args.seqs, args.quantization) as llm:
        engine, runner = llm.engine, llm.engine.executor
        step = runner.forward_strategy
        for i in range(args.seqs):
            engine.add_request(str(i), [rng.randrange(8192) for _ in range(rng.randint(8, 32))],
                               SamplingParams(temperature=0, max_tokens=args.steps + 2, ignore_eos=True))
        engine.step()  # the prefills (one step: max_num_batched_tokens covers them)
        layers = [layer.mlp for layer in runner.model.model.layers if isinstance(layer.mlp, FusedMoE)]
        routed = []
        for layer in layers:  # each layer's choice of experts, from its router's logits
            layer.gate.register_forward_hook(
                lambda _, args, logits, layer=layer: routed.append(route(logits, layer.top_k, layer.renormalize)[1]))
        counters = step.count_experts()
        # an expert's bytes: its weights (packed: and their scales and minimums)
        per_expert = [sum(t[0].nbytes for t in layer.packed_experts().values() if t is not None)
                      if not layer.held else e.w13_stride + e.w2_stride for layer, e in zip(layers, step.moe_layers)]
        for s in range(args.steps):
            plan = engine.scheduler.schedule()
            assert plan.is_decode and len(plan.seqs) == args.seqs, "not a decode step of every sequence"
            routed.clear()
            with torch.inference_mode():
                EagerForward.__call__(step, *runner.prepare(*step_inputs(plan)))  # the torch layers' routing
            for c in counters:
                c.zero_()
            start = time.perf_counter()
            engine.scheduler.update(plan, runner.execute(plan), 0.0)  # the C step, counting
            elapsed = time.perf_counter() - start
            for i, (c, chosen, nbytes) in enumerate(zip(counters, routed, per_expert)):
                rows, union = c[:-1], len(chosen.unique())
                print(json.dumps({
                    "step": s, "layer": i, "seqs": args.seqs, "step_ms": round(elapsed * 1e3, 1),
                    "experts_chosen_by_route": union, "experts_with_rows_in_c": int((rows > 0).sum()),
                    "rows_routed_in_c": int(rows.sum()),
                    "rows_match_route": rows.tolist() == torch.bincount(chosen.flatten(), minlength=len(rows)).tolist(),
                    "bytes_read_in_c": int(c[-1]), "bytes_union": union * nbytes,
                    "bytes_if_per_row": args.seqs * layers[i].top_k * nbytes, "bytes_all_experts": len(rows) * nbytes,
                    "loadavg": load()}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["single", "reads"])
    parser.add_argument("--dir", default="/tmp/nvllm-moe-fused", help="where the two checkpoints are written")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--dtype", default="float32", help="the weights' (float32, bfloat16, float16)")
    parser.add_argument("--models", default="dense,moe", help="single: which models (dense, moe), comma-separated")
    parser.add_argument("--quantization", default="none",
                        help="weight formats (none, int8, int4): single takes a comma-separated list, reads one")
    args = parser.parse_args()
    paths = checkpoints(Path(args.dir))
    (single if args.what == "single" else reads)(args, paths)


if __name__ == "__main__":
    main()
