"""What counting the tokens routed to each expert costs (moe.expert_load): decode tokens/s of a random
Qwen3-MoE (forward=eager) with the count on and off, two engines built in one process, rounds alternated (on, off,
on, off, ...) so that the machine's load falls on both alike; and, since a busy machine's noise
hides a small cost, the count's own work timed alone (a scatter-add of ones at the chosen experts,
per MoE layer per step) against the measured step. Prints each round and the median ratio;
`--json FILE` keeps them.

    python experiments/moe_expert_load.py --preset tiny --rounds 6
    python experiments/moe_expert_load.py --preset tiny --hidden 512 --experts 64 --top-k 8   # wider layers
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from nvllm import LLM, SamplingParams
from nvllm.tools.checkpoint import make_random_checkpoint


def decode_tok_s(llm, prompts, params) -> float:
    """Decode tokens/s of one generate call: the engine's decode-only steps, tokens over seconds."""
    stats = llm.engine.stats
    tokens, seconds = stats.decode_tokens, stats.decode_time
    llm.generate(prompts, params, use_tqdm=False)
    return (stats.decode_tokens - tokens) / (stats.decode_time - seconds)


def add_seconds(num_experts: int, routings: int, repeats: int = 20000) -> float:
    """Seconds of what counting adds to a MoE layer's forward: a scatter-add of ones at the step's
    `routings` chosen experts into the layer's [experts] count."""
    experts, total = torch.randint(num_experts, (routings,)), torch.zeros(num_experts, dtype=torch.int64)
    start = time.perf_counter()
    for _ in range(repeats):
        flat = experts.flatten()
        total.scatter_add_(0, flat, torch.ones_like(flat))
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="qwen3_moe's random preset (nvllm.tools.checkpoint)")
    parser.add_argument("--hidden", type=int, help="hidden_size over the preset's (head_dim stays)")
    parser.add_argument("--experts", type=int, help="num_experts over the preset's")
    parser.add_argument("--top-k", type=int, help="num_experts_per_tok over the preset's")
    parser.add_argument("--seqs", type=int, default=8, help="sequences decoding together")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--output", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="generate calls per setting, alternated")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    fields = {k: v for k, v in (("hidden_size", args.hidden), ("num_experts", args.experts),
                                ("num_experts_per_tok", args.top_k)) if v}
    prompts = [[(7 * i + j) % 500 for j in range(args.prompt)] for i in range(args.seqs)]
    params = SamplingParams(temperature=0, max_tokens=args.output, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_random_checkpoint("qwen3_moe", tmp, preset=args.preset, seed=0, **fields)
        # forward=eager: the strategy whose MoE layers count (fused_cpu's C step routes in C)
        settings = dict(forward="eager", max_model_len=args.prompt + args.output + 16, kv_cache={"prefix_caching": False})
        with LLM(path, moe={"expert_load": True}, **settings) as on, LLM(path, moe={"expert_load": False}, **settings) as off:
            rounds = {"on": [], "off": []}
            for r in range(args.rounds):
                for name, llm in (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on)):
                    rounds[name].append(decode_tok_s(llm, prompts, params))
                    print(f"round {r} expert_load={name}: {rounds[name][-1]:.1f} decode tok/s", flush=True)
            counted = on.engine.executor.expert_load()
            experts, top_k = on.engine.executor.hf_config.num_experts, on.engine.executor.hf_config.num_experts_per_tok
    ratios = [a / b for a, b in zip(rounds["on"], rounds["off"])]
    # per decode step: each MoE layer's add, against the fastest step measured with the count off (the
    # least disturbed by the load, so the largest share)
    added = add_seconds(experts, args.seqs * top_k) * len(counted)
    step = args.seqs / max(rounds["off"])
    result = {"model": {"preset": args.preset, **fields}, "seqs": args.seqs, "prompt": args.prompt, "output": args.output,
              "count_seconds_per_step": added, "decode_step_seconds": step, "count_share_of_step": added / step,
              "decode_tok_s": rounds, "on_over_off": ratios, "median_on_over_off": statistics.median(ratios),
              "load_average": os.getloadavg(), "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "layers_counted": sorted(counted)}
    print(f"median decode tok/s on {statistics.median(rounds['on']):.1f}, off {statistics.median(rounds['off']):.1f}; "
          f"on/off per round pair: {', '.join(f'{r:.3f}' for r in ratios)} (median {result['median_on_over_off']:.3f}); "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"the count's own work: {added * 1e6:.1f} us per decode step ({len(counted)} MoE layers), "
          f"{100 * added / step:.3f} % of a {step * 1e3:.1f} ms step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
