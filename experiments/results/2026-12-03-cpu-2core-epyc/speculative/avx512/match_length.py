"""How often prompt lookup's first drafted token is right, by the length n of the match it comes
from: the grounded workload's greedy outputs (speculative=none), and at every output position the
latest earlier occurrence of the longest suffix (up to 6 tokens) of what precedes it. n = 0: the
last token occurs nowhere earlier, so nothing can be drafted.

    python match_length.py > match_length.out"""
import numpy as np

from nvllm import LLM
from nvllm.config import compose
from nvllm.workloads import build_requests

cfg = compose(workload="grounded")
with LLM() as llm:
    prompts, params = build_requests(cfg.workload, cfg.sampling, llm.tokenizer)
    outputs = llm.generate(prompts, params, use_tqdm=False)
counts = {}  # n -> [positions, first token right]
for prompt, output in zip(prompts, outputs):
    seq, out = list(output.prompt_token_ids), output.outputs[0].token_ids
    for i, token in enumerate(out):
        t = np.asarray(seq)
        ends = np.flatnonzero(t[:-1] == t[-1])
        n, right = 0, False
        if len(ends):
            matched, alive = np.ones(len(ends), dtype=np.int64), np.ones(len(ends), dtype=bool)
            for m in range(1, 6):
                alive &= (ends >= m) & (t[np.maximum(ends - m, 0)] == t[len(t) - 1 - m])
                matched += alive
            n = int(matched.max())
            right = int(t[ends[matched >= n][-1] + 1]) == token
        c = counts.setdefault(n, [0, 0])
        c[0] += 1
        c[1] += right
        seq.append(token)
print("match length n | output positions | first drafted token right")
for n in sorted(counts):
    positions, right = counts[n]
    print(f"{n if n < 6 else '6+':>14} | {positions:16d} | {right:4d} ({right / positions:.0%})")
