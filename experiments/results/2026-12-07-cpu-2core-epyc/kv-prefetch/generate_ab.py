"""Decode tok/s of two engines in one process, the second with its C kernels built with extra flags
(NVLLM_KERNEL_FLAGS): each round, each engine decodes `batch` 128-token prompts (random ids, seed 0)
for 128 greedy tokens each; decode = 127 tokens a prompt / (the generate's time less a 1-token one's).

    python generate_ab.py -DAHEAD=0 bfloat16 8      # flags, dtype, rounds (one prompt)
    python generate_ab.py -DAHEAD=0 bfloat16 4 32   # ... and 32 prompts decoding together
"""
import os
import random
import statistics
import sys
import time

from nvllm import LLM, SamplingParams
from nvllm.forward import fused_cpu

flags, dtype, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
engines = {}
for name, extra in (("default", ""), (flags, flags)):
    os.environ["NVLLM_KERNEL_FLAGS"] = extra
    fused_cpu.kernel.cache_clear()  # the step compiled (or found in the kernel cache) with these flags
    engines[name] = LLM("smollm2", dtype=dtype)
rng = random.Random(0)
prompts = [{"prompt_token_ids": [rng.randrange(10000) for _ in range(128)]} for _ in range(batch)]
full = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
first = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
speeds, tokens = {name: [] for name in engines}, {}
for _ in range(rounds):
    for name, llm in engines.items():
        start = time.perf_counter()
        llm.generate(prompts, first, use_tqdm=False)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = llm.generate(prompts, full, use_tqdm=False)
        speeds[name].append(127 * batch / (time.perf_counter() - start - prefill))
        tokens[name] = [o.outputs[0].token_ids for o in out]
for name, v in speeds.items():
    print(f"{dtype} {name}: decode tok/s median {statistics.median(v):.1f} all {' '.join(f'{x:.1f}' for x in v)}")
print(f"batch {batch}; same tokens", len({str(t) for t in tokens.values()}) == 1)
