"""`python -m nvllm.tools.spec_bench [--workload W] [--rounds N] [key=value ...]`: decode tok/s of
speculative=none against a drafter on one machine in one process, paired: both engines are loaded
once, and each request (or, with --batched, the whole workload) runs on one and then the other,
the order alternating, so the two meet about the same load from whatever else runs on the
machine. The overrides (Hydra's key=value, as `python -m nvllm.run` takes) apply to both engines
except the `speculative.*` ones, which make the second. Prints per-request and total decode tok/s,
the ratio, vLLM's acceptance figures, and whether the tokens were identical; --out writes it as JSON.

    python -m nvllm.tools.spec_bench speculative=ngram                     # workload=grounded, one request at a time
    python -m nvllm.tools.spec_bench --workload chat speculative=ngram speculative.num_speculative_tokens=2
    python -m nvllm.tools.spec_bench --workload cpu_bench --batched speculative=ngram   # all 64 in flight"""
import argparse
import json
import statistics
import subprocess
import time


def overrides_of(items: list[str]) -> tuple[dict, dict]:
    """key=value items as (engine overrides, the drafter's `speculative` dict); values are YAML."""
    import yaml

    engine, speculative = {}, {}
    for item in items:
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        if key == "speculative":
            speculative["name"] = value
        elif key.startswith("speculative."):
            speculative[key.split(".", 1)[1]] = value
        else:
            node = engine
            *parents, leaf = key.split(".")
            for p in parents:
                if isinstance(node.get(p), str):  # a group's option, then its fields: model=qwen3 model.path=...
                    node[p] = {"name": node[p]}
                node = node.setdefault(p, {})
            if isinstance(node.get(leaf), dict) and not isinstance(value, dict):  # model.path=... then model=qwen3
                node[leaf]["name"] = value
            else:
                node[leaf] = value
    return engine, speculative


def run(llm, prompts, params) -> tuple[list[list[int]], int, float]:
    """Tokens, decode tokens and decode seconds of one generate call."""
    stats = llm.engine.stats
    tokens, seconds = stats.decode_tokens, stats.decode_time
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs], stats.decode_tokens - tokens, stats.decode_time - seconds


def main(argv=None):
    from omegaconf import OmegaConf

    from nvllm import LLM, SamplingParams
    from nvllm.config import compose
    from nvllm.workloads import build_requests

    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.spec_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("overrides", nargs="*", help="key=value: engine overrides; speculative.*: the drafter")
    parser.add_argument("--workload", default="grounded", help="a workload option (default: grounded)")
    parser.add_argument("--batched", action="store_true", help="all requests in flight at once, not one at a time")
    parser.add_argument("--rounds", type=int, default=2, help="times each engine runs everything (default 2)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    engine, speculative = overrides_of(args.overrides)
    if not speculative.get("name") or speculative["name"] == "none":
        parser.error("name the drafter to compare with speculative=none, e.g. speculative=ngram")
    workload = engine.pop("workload", {})  # workload.* overrides: the requests', not the engines'
    cfg = compose(workload=args.workload, **engine)
    cfg.workload = OmegaConf.merge(cfg.workload, workload)
    engines = {"none": LLM(**engine), "spec": LLM(**engine, speculative=speculative)}
    prompts, params = build_requests(cfg.workload, cfg.sampling, engines["none"].tokenizer)
    batches = [(prompts, params)] if args.batched else [([p], [sp]) for p, sp in zip(prompts, params)]
    for llm in engines.values():  # warm-up: the C kernels and first-call costs, outside the clock
        llm.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    totals = {name: [0, 0.0] for name in engines}
    per_batch = [{"none": [0, 0.0], "spec": [0, 0.0]} for _ in batches]
    identical, start = True, time.time()
    for r in range(args.rounds):
        for i, (p, sp) in enumerate(batches):
            order = ["none", "spec"] if (r + i) % 2 == 0 else ["spec", "none"]
            tokens = {}
            for name in order:
                tokens[name], n, seconds = run(engines[name], p, sp)
                for acc in (totals[name], per_batch[i][name]):
                    acc[0] += n
                    acc[1] += seconds
            identical &= tokens["none"] == tokens["spec"]
    rate = {name: n / s for name, (n, s) in totals.items()}
    spec_stats = engines["spec"].engine.stats.spec_decode.as_dict()
    result = {
        "workload": args.workload, "batched": args.batched, "rounds": args.rounds, "overrides": args.overrides,
        "decode_tok_s": rate, "speedup": rate["spec"] / rate["none"], "identical_tokens": identical,
        "per_request_speedup": [(b["spec"][0] / b["spec"][1]) / (b["none"][0] / b["none"][1]) for b in per_batch],
        "spec_decode": spec_stats, "seconds": time.time() - start,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "device": f"{engines['none'].engine.config.device}, {__import__('torch').get_num_threads()} threads",
    }
    for llm in engines.values():
        llm.close()
    ratios = result["per_request_speedup"]
    print(f"{args.workload}{' (batched)' if args.batched else ''}, {args.rounds} rounds, {' '.join(args.overrides)}")
    print(f"  decode tok/s: none {rate['none']:.1f}, {speculative['name']} {rate['spec']:.1f}: {result['speedup']:.2f}x"
          f" (per {'batch' if args.batched else 'request'}: median {statistics.median(ratios):.2f}x, "
          f"{min(ratios):.2f}-{max(ratios):.2f}x); identical tokens: {identical}")
    print(f"  acceptance {spec_stats['draft_acceptance_rate'] or 0:.2f}, mean acceptance length "
          f"{spec_stats['mean_acceptance_length'] or 0:.2f}; {result['uptime']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
