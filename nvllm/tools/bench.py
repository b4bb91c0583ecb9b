"""Side-by-side throughput: nvllm against Hugging Face transformers `generate` and llama.cpp
(through llama-cpp-python, when installed), on the same SmolLM2-135M weights and workload.

    python -m nvllm.tools.bench                                   # cpu-bench and single-stream, all peers
    python -m nvllm.tools.bench --workload cpu-bench --peers nvllm,llamacpp --out bench.json
    python -m nvllm.tools.bench --num-requests 4 --min-len 4 --max-len 16   # a quick look

Workloads (greedy, ignore EOS, float32 for nvllm and transformers):
  cpu-bench      64 requests, random prompt ids below 10000, prompt and output lengths uniform in
                 [32, 256], seed 0 — the same requests as `python -m nvllm.run workload=random
                 workload.num_seqs=64 workload.input_len=[32,256] workload.output_len=[32,256]`.
  single-stream  one 128-token prompt, 128 output tokens; decode tok/s is what matters.
  host           no peers: nvllm's host work per decode step, forward replaced by a no-op, by phase
                 (nvllm/tools/host_bench.py; `--workload host --help` lists its options).

Each run happens in a child process of its own, one after another (no two runs share the two
cores or leave memory behind), with a warm-up before the clock starts; loading is timed apart
(`load_s`). Throughput is output tokens / wall time. transformers batches statically: see
nvllm/tools/bench_peers/hf.py for how its padding waste is handled (each request is credited only
with its own tokens). llama.cpp runs f16 and f32 GGUFs written from the same safetensors, and
(`--llamacpp-weights`) q8_0, q4_0 and q4_1 files its own quantizer makes of the f32 one, all
requests in flight at once: see nvllm/tools/bench_peers/llamacpp.py.

Matched formats: `--nvllm-dtypes float32,bfloat16` runs nvllm once per weight dtype and
`--nvllm-quantizations none,int8,int4,gguf` once per weight format (every pair of the two). Each
peer run is compared with the nvllm runs whose linear layers are stored alike (`format`):
float32 (f32: llama.cpp f32, transformers), bfloat16 and float16 (f16), int8 (q8_0: Q8_0's
scheme), int4 (q4_1: Q4_1's), gguf (the file's own block type: the embedded SmolLM2's Q4_1 file,
or with `gguf=q8_0|q4_0|q4_1` the very file llama.cpp's quantizer wrote for the peer, so both read
the same blocks). nvllm keeps the embedding and the LM head in int8 (Q8_0's scheme) in every
packed format, `dtype` with none; llama.cpp keeps them as its quantizer's mixture picks (each run's
`settings.tensor_types`: Q8_0 in its q8_0, q4_0 and q4_1 files), and each run's `weight_bytes`
says what the weights take. A packed format's name with `:a8` (int8:a8, gguf=q4_0:a8) runs it with
quantization.activations=int8: activations rounded to int8 a block of 32, as llama.cpp computes with
its quantized files. `--rounds 3` runs the whole plan three times,
alternating, and keeps each run's median (every round's numbers stay in the JSON).

    python -m nvllm.tools.bench --peers nvllm,llamacpp --llamacpp-weights f32,f16,q8_0,q4_0,q4_1 \
        --nvllm-quantizations none,int8,int4,gguf,gguf=q4_0
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = ("cpu-bench", "single-stream")
PEERS = ("nvllm", "hf", "llamacpp")
MAX_TOKEN_ID = 10000  # nvllm.run's workload=random default, so that both give the same requests
# --llamacpp-tune tries these changes to llamacpp.DEFAULTS (f16, the first 16 cpu-bench requests,
# all in flight) and keeps the fastest for every llama.cpp run
LLAMACPP_CANDIDATES = [{}, dict(flash_attn=False), dict(kv_unified=False), dict(n_ubatch=256), dict(n_ubatch=1024)]


# nvllm runs with its own defaults (what `LLM("smollm2")` does on this machine: every `auto`
# resolved, see the run's settings.engine in the JSON); only the device is pinned, so that a CUDA
# machine still benchmarks the CPU
NVLLM_DEFAULTS = {"device": "cpu"}


def requests(workload: str, num_requests: int | None, min_len: int, max_len: int, seed: int = 0):
    """Prompts (token-id lists) and output lengths. Drawn like nvllm.workloads' random workload:
    per request a prompt length, its ids, then an output length, from one seeded stream."""
    rng = random.Random(seed)
    if workload == "single-stream":
        return [[rng.randrange(MAX_TOKEN_ID) for _ in range(128)]], [128]
    prompts, max_tokens = [], []
    for _ in range(64 if num_requests is None else num_requests):
        prompts.append([rng.randrange(MAX_TOKEN_ID) for _ in range(rng.randint(min_len, max_len))])
        max_tokens.append(rng.randint(min_len, max_len))
    return prompts, max_tokens


def workload_description(workload: str, args) -> dict:
    if workload == "single-stream":
        return dict(num_requests=1, prompt_len=128, output_len=128, max_token_id=MAX_TOKEN_ID, seed=0,
                    greedy=True, ignore_eos=True)
    return dict(num_requests=64 if args.num_requests is None else args.num_requests,
                prompt_and_output_len=[args.min_len, args.max_len], max_token_id=MAX_TOKEN_ID, seed=0,
                greedy=True, ignore_eos=True)


# the GGUF block type each nvllm weight format stores its linear layers like (docs/quantization.md):
# a llama.cpp run on that type is its match
PACKED_LIKE = {"int8": "q8_0", "int4": "q4_1"}


def nvllm_options(dtype: str, quantization: str) -> dict:
    """LLM() overrides for one nvllm run: `quantization` is a format's name, or gguf=TYPE (the file
    llama.cpp's quantizer writes for the peer at TYPE, as quantization.file), either followed by :a8
    for quantization.activations=int8."""
    options = {"dtype": dtype} if dtype else {}
    quantization, _, activations = quantization.partition(":")
    if activations:
        options["quantization.activations"] = "int8"
    name, _, weights = quantization.partition("=")
    if name != "none":
        options["quantization.name"] = name
    if weights:
        options["quantization.file"] = f"llamacpp:{weights}"  # the child writes (once) and names the file
    return options


def plan(args) -> list[dict]:
    """The runs, in order: (workload, peer, variant, options) for each."""
    runs = []
    for workload in WORKLOADS if args.workload == "all" else [args.workload]:
        for peer in args.peers:
            if peer == "nvllm":
                for dtype in args.nvllm_dtypes:
                    for quantization in args.nvllm_quantizations:
                        variant = "+".join(v for v in (dtype, quantization) if v and v != "none")
                        runs.append(dict(workload=workload, peer="nvllm", variant=variant,
                                         options={**args.nvllm, **nvllm_options(dtype, quantization)}))
            elif peer == "hf":
                # single-stream: one request, so batch size 1
                for bs in [1] if workload == "single-stream" else args.hf_batch_sizes:
                    runs.append(dict(workload=workload, peer="hf", variant=f"batch={bs}", options=dict(batch_size=bs)))
            elif peer == "llamacpp":
                for weights in args.llamacpp_weights:
                    runs.append(dict(workload=workload, peer="llamacpp", variant=weights,
                                     options={**args.llamacpp, "weights": weights}))
    return runs


def run_nvllm(spec: dict) -> dict:
    import torch

    from nvllm import LLM, SamplingParams

    torch.set_num_threads(spec["threads"])
    prompts, max_tokens = spec["prompts"], spec["max_tokens"]
    options = {**NVLLM_DEFAULTS, **_nest(spec.get("options", {}))}
    quantization = options.get("quantization")
    file = quantization.get("file") or "" if isinstance(quantization, dict) else ""
    if file.startswith("llamacpp:"):
        from nvllm.tools.bench_peers import llamacpp

        options["quantization"]["file"] = str(llamacpp.gguf_path(file.removeprefix("llamacpp:")))
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=n) for n in max_tokens]
    start = time.perf_counter()
    with LLM("smollm2", **options) as llm:
        llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - start
        effective = {k: str(v) for k, v in vars(llm.engine.config).items()}
        weight_format, weight_bytes = nvllm_format(llm.engine.config), llm.engine.executor.weight_bytes()
    rejected = [o.error for o in outputs if o.error]
    if rejected:
        raise RuntimeError(f"{len(rejected)} requests rejected, e.g. {rejected[0]}")
    tokens = [o.outputs[0].token_ids for o in outputs]
    output_tokens = sum(len(t) for t in tokens)
    decode = [(len(t) - 1, o.metrics.tpot * (len(t) - 1)) for o, t in zip(outputs, tokens) if o.metrics.tpot]
    return dict(output_tokens=output_tokens, computed_tokens=output_tokens, wall_s=wall, tok_s=output_tokens / wall,
                load_s=load_s, ttft_s=sorted(o.metrics.ttft for o in outputs)[len(outputs) // 2],
                decode_tok_s=sum(n for n, _ in decode) / sum(t for _, t in decode) if decode else None,
                tokens=tokens[:spec["check"]], format=weight_format, weight_bytes=weight_bytes,
                settings=dict(overrides=options, threads=spec["threads"], engine=effective))


def nvllm_format(config) -> str:
    """How a run's linear layers are stored, as a GGUF type name (f32, f16, q8_0, q4_1, ...)."""
    q = config.quantization
    if q is None or q.name == "none":
        return "f32" if config.dtype == "float32" else "f16"
    if q.name == "gguf":
        from nvllm.quantization.gguf import linear_tensors

        return "+".join(sorted({t.tensor_type.name.lower() for t in linear_tensors(q.file)}))
    return PACKED_LIKE.get(q.name, q.name)


def _nest(flat: dict) -> dict:
    """{"kv_cache.block_size": 16} -> {"kv_cache": {"block_size": 16}}: LLM()'s override form."""
    nested = {}
    for key, value in flat.items():
        *groups, leaf = key.split(".")
        node = nested
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return nested


def run_child(run: dict, prompts, max_tokens, args) -> dict:
    """One run in a fresh Python process; its output goes to the terminal, its result to a file."""
    spec = dict(run, prompts=prompts, max_tokens=max_tokens, threads=args.threads, check=args.check)
    with tempfile.TemporaryDirectory(prefix="nvllm-bench-") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "nvllm.tools.bench", "--run-one", str(spec_file),
                               "--result", str(result_file)])
        if proc.returncode != 0 or not result_file.is_file():
            return dict(error=f"child process exited with {proc.returncode} (its output is above)")
        return json.loads(result_file.read_text())


def child_main(spec_file: str, result_file: str):
    spec = json.loads(Path(spec_file).read_text())
    if spec["peer"] == "nvllm":
        result = run_nvllm(spec)
    elif spec["peer"] == "hf":
        from nvllm.tools.bench_peers import hf

        result = hf.run(spec)
    else:
        from nvllm.tools.bench_peers import llamacpp

        result = llamacpp.run(spec)
    Path(result_file).write_text(json.dumps(result))


def tune_llamacpp(args) -> list[dict]:
    """Run each candidate change (on top of the --llamacpp settings) on a slice of cpu-bench;
    set args.llamacpp to the fastest. Returns every trial."""
    prompts, max_tokens = requests("cpu-bench", args.num_requests, args.min_len, args.max_len)
    prompts, max_tokens = prompts[:16], max_tokens[:16]
    trials = []
    for candidate in LLAMACPP_CANDIDATES:
        options = {**args.llamacpp, **candidate, "weights": "f16"}
        print(f"\n== tuning llama.cpp: {options} ({len(prompts)} requests) ==", flush=True)
        result = run_child(dict(workload="tune", peer="llamacpp", variant="f16", options=options), prompts, max_tokens, args)
        trials.append(dict(options=options, tok_s=result.get("tok_s"), error=result.get("error")))
        if "tok_s" in result:
            print(f"== {result['tok_s']:.1f} output tok/s", flush=True)
    ok = [t for t in trials if t["tok_s"]]
    if ok:
        best = max(ok, key=lambda t: t["tok_s"])["options"]
        args.llamacpp = {k: v for k, v in best.items() if k != "weights"}
        print(f"bench: llama.cpp runs with {args.llamacpp}", flush=True)
    return trials


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """Greedy agreement of two runs on the same requests: the share of tokens before the first
    mismatch (after one, greedy decoding continues from different text), and identical requests."""
    same = total = identical = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        prefix = next((i for i in range(n) if x[i] != y[i]), n)
        same, total, identical = same + prefix, total + len(x), identical + (x == y)
    return dict(requests=len(a), identical=identical, prefix_agreement_pct=100.0 * same / total if total else None)


def drop_slower_hf(results: list[dict]) -> list[dict]:
    """transformers runs once per batch size; the table keeps its best per workload (the JSON
    keeps all)."""
    best = {}
    for r in results:
        if r["peer"] == "hf" and "tok_s" in r and r["tok_s"] > best.get(r["workload"], {}).get("tok_s", -1):
            best[r["workload"]] = r
    return [r for r in results if r["peer"] != "hf" or "tok_s" not in r or best[r["workload"]] is r]


def medians(results: list[dict]) -> list[dict]:
    """One result per (workload, peer, variant): with several rounds, the one of median output tok/s
    (the lower middle one of an even count), every round's tok/s and decode tok/s kept in `rounds`;
    a run that failed in any round stays failed."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["peer"], r["variant"]), []).append(r)
    out = []
    for group in groups.values():
        failed = [r for r in group if "tok_s" not in r]
        if len(group) == 1 or failed:
            out.append(failed[0] if failed else group[0])
            continue
        ranked = sorted(group, key=lambda r: r["tok_s"])
        out.append({**ranked[(len(ranked) - 1) // 2],
                    "rounds": [dict(tok_s=r["tok_s"], decode_tok_s=r.get("decode_tok_s")) for r in group]})
    return out


def weight_format(run: dict) -> str:
    """How a run stores its linear layers' weights, as a GGUF type name: nvllm's `format`,
    llama.cpp's GGUF type; transformers: f32."""
    if run["peer"] == "nvllm":
        return run["format"]
    return run["variant"] if run["peer"] == "llamacpp" else "f32"


def summarize(results: list[dict]) -> list[dict]:
    """Per workload: nvllm against each peer run, ratio of output tok/s (and of decode tok/s). With
    several nvllm runs (--nvllm-dtypes, --nvllm-quantizations) a peer run is compared with each
    nvllm run whose weights are stored in its format (else with the first), a row each; `vs` names
    the nvllm run."""
    rows = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        runs = [r for r in results if r["workload"] == workload and "tok_s" in r]
        nvllm = [r for r in runs if r["peer"] == "nvllm"]
        pairs = [(r, None) for r in nvllm]
        for r in runs:
            if r["peer"] != "nvllm":
                matched = [o for o in nvllm if weight_format(o) == weight_format(r)] or nvllm[:1] or [None]
                pairs += [(r, ours) for ours in matched]
        for r, ours in pairs:
            row = dict(workload=workload, peer=r["peer"], variant=r["variant"], format=weight_format(r),
                       tok_s=r["tok_s"], wall_s=r["wall_s"], decode_tok_s=r.get("decode_tok_s"),
                       weight_bytes=r.get("weight_bytes"))
            if ours is not None:
                row["vs"] = ours["variant"]
                row["nvllm_over_peer"] = ours["tok_s"] / r["tok_s"]
                if workload == "single-stream" and ours.get("decode_tok_s") and r.get("decode_tok_s"):
                    row["nvllm_over_peer_decode"] = ours["decode_tok_s"] / r["decode_tok_s"]
                if ours.get("tokens") and r.get("tokens"):
                    row["agreement"] = agreement(ours["tokens"], r["tokens"])
            rows.append(row)
    return rows


def print_table(rows: list[dict], skipped: dict, failed: list[dict]):
    print()
    print(f"{'workload':14} {'peer':9} {'variant':12} {'format':6} {'weights MiB':>11} {'out tok/s':>9} {'wall s':>8} "
          f"{'decode tok/s':>12} {'nvllm/peer':>10} {'agree':>6} {'vs nvllm':>12}")
    for r in rows:
        ratio = f"{r['nvllm_over_peer']:.2f}x" if "nvllm_over_peer" in r else ""
        if "nvllm_over_peer_decode" in r and r["workload"] == "single-stream":
            ratio = f"{r['nvllm_over_peer_decode']:.2f}x"  # single stream: decode speed is the point
        agree = r.get("agreement", {}).get("prefix_agreement_pct")
        # a per-request rate: it means decode speed only with one request
        decode = f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") and r["workload"] == "single-stream" else ""
        size = f"{r['weight_bytes'] / 2**20:.1f}" if r.get("weight_bytes") else ""
        print(f"{r['workload']:14} {r['peer']:9} {r['variant']:12} {r['format']:6} {size:>11} {r['tok_s']:9.1f} "
              f"{r['wall_s']:8.1f} {decode:>12} {ratio:>10} {'' if agree is None else f'{agree:.0f}%':>6} "
              f"{(r['vs'] or 'defaults') if 'vs' in r else '':>12}")
    for f in failed:
        print(f"{f['workload']:14} {f['peer']:9} {f['variant']:12} FAILED: {f['error']}")
    for peer, reason in skipped.items():
        print(f"skipped {peer}: {reason}")
    print("out tok/s: output tokens / wall time (transformers: each request credited with its own max_tokens "
          "only, though a static batch computes up to the batch's longest). nvllm/peer: output tok/s ratio "
          "(single-stream: decode tok/s ratio, decode = tokens after the first / time after the first). agree: greedy tokens equal to nvllm's before the first "
          "mismatch, on the first requests. format: how the linear layers are stored (nvllm: int8 as q8_0, int4 as "
          "q4_1); a peer is compared with the nvllm runs of its format.")


def parse_args(argv=None):
    from nvllm.tools.bench_peers import llamacpp

    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="all", choices=[*WORKLOADS, "all"])
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, from: " + ", ".join(PEERS))
    parser.add_argument("--num-requests", type=int, help="cpu-bench requests (default 64); fewer for a quick run")
    parser.add_argument("--min-len", type=int, default=32, help="cpu-bench shortest prompt and output")
    parser.add_argument("--max-len", type=int, default=256, help="cpu-bench longest prompt and output")
    parser.add_argument("--out", default="bench.json", help="where the JSON results go")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for every peer")
    parser.add_argument("--check", type=int, default=4, help="compare greedy tokens on this many first requests")
    parser.add_argument("--hf-batch-sizes", default="16,64", help="transformers batch sizes to try; best is kept")
    parser.add_argument("--llamacpp-weights", default="f16,f32",
                        help="GGUF types to run: f32, f16 (written from the safetensors), q8_0, q4_0, q4_1 "
                             "(llama.cpp's quantizer on the f32 file)")
    parser.add_argument("--llamacpp", action="append", default=[], metavar="KEY=VALUE",
                        help="llama.cpp context setting: n_batch, n_ubatch, flash_attn, kv_unified, kv (auto|f16|f32), "
                             "max_in_flight (0 = all)")
    parser.add_argument("--llamacpp-tune", action="store_true",
                        help="first try a few llama.cpp settings on 16 requests and keep the fastest (five extra runs on 16 requests)")
    parser.add_argument("--nvllm", action="append", default=[], metavar="KEY=VALUE",
                        help="nvllm override, as for LLM(), over the bench's "
                             + " ".join(f"{k}={v}" for k, v in NVLLM_DEFAULTS.items()) + ": attention=sdpa, ...")
    parser.add_argument("--nvllm-dtypes", default="",
                        help="nvllm runs, one per weight dtype: float32, bfloat16, float16 (default: one run, dtype=auto)")
    parser.add_argument("--nvllm-quantizations", default="none",
                        help="nvllm runs, one per weight format: none, int8, int4, gguf (the embedded Q4_1 file), "
                             "gguf=q8_0|q4_0|q4_1 (the file llama.cpp's quantizer writes for the peer); "
                             "any of those but none with :a8: quantization.activations=int8")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the whole plan this many times, alternating, and keep each run's median")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; peers: {', '.join(PEERS)}")
    args.hf_batch_sizes = [int(b) for b in args.hf_batch_sizes.split(",")]
    args.llamacpp_weights = [w.strip() for w in args.llamacpp_weights.split(",")]
    if set(args.llamacpp_weights) - set(llamacpp.WEIGHTS):
        parser.error(f"--llamacpp-weights takes {', '.join(llamacpp.WEIGHTS)}")
    args.llamacpp = _key_values(parser, args.llamacpp)
    args.nvllm = _key_values(parser, args.nvllm)
    args.nvllm_dtypes = [d.strip() for d in args.nvllm_dtypes.split(",")]
    if set(args.nvllm_dtypes) - {"", "float32", "bfloat16", "float16"}:
        parser.error("--nvllm-dtypes takes float32, bfloat16 and/or float16")
    args.nvllm_quantizations = [q.strip() for q in args.nvllm_quantizations.split(",")]
    packed = {"int8", "int4", "gguf", *(f"gguf={w}" for w in llamacpp.QUANTIZED_WEIGHTS)}
    known = {"none", *packed, *(f"{q}:a8" for q in packed)}
    if set(args.nvllm_quantizations) - known:
        parser.error(f"--nvllm-quantizations takes {', '.join(sorted(known))}")
    if any(k.split(".")[0] == "quantization" for k in args.nvllm) and args.nvllm_quantizations != ["none"]:
        parser.error("--nvllm quantization=... and --nvllm-quantizations both set the format; keep one")
    if "dtype" in args.nvllm and args.nvllm_dtypes != [""]:
        parser.error("--nvllm dtype=... and --nvllm-dtypes both set the dtype; keep one")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.min_len < 1 or args.max_len < args.min_len:
        parser.error("need 1 <= --min-len <= --max-len")
    return args


def _key_values(parser, items: list[str]) -> dict:
    import yaml  # comes with hydra (omegaconf); parses 64, 0.5, true, f16 into int, float, bool, str

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--workload=host" in argv or any(a == "--workload" and b == "host" for a, b in zip(argv, argv[1:])):
        from nvllm.tools import host_bench

        return host_bench.main(argv)
    args = parse_args(argv)
    if args.run_one:
        child_main(args.run_one, args.result)
        return 0
    from nvllm.tools.bench_peers import llamacpp

    skipped = {}
    if "llamacpp" in args.peers and (reason := llamacpp.unavailable_reason()):
        print(f"bench: skipping llama.cpp: {reason}", flush=True)
        skipped["llamacpp"] = reason
        args.peers.remove("llamacpp")
    tuning = tune_llamacpp(args) if args.llamacpp_tune and "llamacpp" in args.peers else None
    results = []
    for round_ in range(args.rounds):
        for run in plan(args):
            prompts, max_tokens = requests(run["workload"], args.num_requests, args.min_len, args.max_len)
            label = f"{run['workload']}: {run['peer']} {run['variant']}".strip()
            label += f" (round {round_ + 1} of {args.rounds})" if args.rounds > 1 else ""
            print(f"\n== {label} ({len(prompts)} requests, {sum(max_tokens)} output tokens) ==", flush=True)
            result = {**run, "requests": len(prompts), **run_child(run, prompts, max_tokens, args)}
            if "tok_s" in result:
                print(f"== {label}: {result['tok_s']:.1f} output tok/s, {result['wall_s']:.1f} s", flush=True)
            results.append(result)
    results = medians(results)
    shown = drop_slower_hf(results)
    rows = summarize(shown)
    failed = [r for r in results if "error" in r]
    print_table(rows, skipped, failed)
    report = dict(
        argv=sys.argv[1:], threads=args.threads, cpu_count=os.cpu_count(),
        note="noisy unless the machine was otherwise idle; output tok/s = output tokens / wall time",
        workloads={w: workload_description(w, args) for w in dict.fromkeys(r["workload"] for r in results)},
        summary=rows, runs=results, skipped=skipped, llamacpp_tuning=tuning)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
