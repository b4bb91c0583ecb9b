"""The resident memory of a model's weights under forward=fused_cpu, by dtype, in a fresh process
each: the weight bytes the engine reports, how much the process's resident set grew over start-up
(VmRSS, and RssAnon: less the checkpoint's file pages; after malloc_trim, so memory the allocator
merely keeps does not count; a small KV cache, reported beside it), and
the time of one long prefill (longer than forward.max_prefill_context: float32 runs it through the
torch modules) and of a short generation. Run it with PYTHONPATH at two checkouts to compare them
in one sitting:

    python experiments/resident_weights.py --dtypes float32,bfloat16 --checkouts /work/main,/tmp/base
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import torch
from nvllm import LLM, SamplingParams
import ctypes, gc
def rss(field):  # MiB; memory the allocator keeps but no tensor holds is handed back first
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) / 1024
dtype = sys.argv[1]
before = {field: rss(field) for field in ("VmRSS", "RssAnon")}
llm = LLM(dtype=dtype, max_model_len=2048, kv_cache={"memory_budget_gb": 0.2})
grown = {field: rss(field) - before[field] for field in before}
long = [[(17 * i) % 30000 + 100 for i in range(1500)]]
t = time.perf_counter(); llm.generate(long, SamplingParams(max_tokens=1), use_tqdm=False); prefill = time.perf_counter() - t
greedy = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
llm.generate([[1, 2, 3]], greedy, use_tqdm=False)
t = time.perf_counter(); out = llm.generate([[1, 2, 3]], greedy, use_tqdm=False); decode = time.perf_counter() - t
print(json.dumps({"dtype": dtype, "forward": llm.engine.config.forward.name,
                  "weight_mib": llm.engine.executor.weight_bytes() / 2**20, "vmrss_growth_mib": grown["VmRSS"], "rssanon_growth_mib": grown["RssAnon"],
                  "kv_cache_mib": llm.engine.kv_cache.num_blocks * llm.engine.executor.block_bytes() / 2**20,
                  "prefill_1500_s": prefill, "decode_tok_s": 128 / decode,
                  "tokens": out[0].outputs[0].token_ids[:8]}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--checkouts", default=".", help="comma-separated checkouts, run in turn per dtype")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for _ in range(args.rounds):
        for dtype in args.dtypes.split(","):
            for checkout in args.checkouts.split(","):
                env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
                out = subprocess.run([sys.executable, "-c", CHILD, dtype], env=env, capture_output=True, text=True,
                                     check=True, cwd=checkout).stdout  # (`-c` puts the working directory first)
                row = {"checkout": checkout, **json.loads(out.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
