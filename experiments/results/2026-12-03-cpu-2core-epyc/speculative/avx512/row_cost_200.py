"""What scored rows cost the C step (forward=fused_cpu) at a 200-token context, the grounded
workload's: one forward pass with 1, 9 and 64 query rows of one sequence (a decode step, a verify
step of 8 drafts, a 64-row batch), each row's logits computed; SmolLM2-135M, float32, the default
threads. Three repeats of ms a call (the mean of 10 after 3 warm-up calls), and the 9-row step's
cost in decode steps. Run it with PYTHONPATH pointing at the checkout to time.

    python row_cost_200.py"""
import time

from nvllm import LLM

with LLM("smollm2", max_model_len=2048) as llm:
    runner = llm.engine.model_runner
    table, ctx = list(range(8)), 200
    for _ in range(3):
        ms = {}
        for rows in (1, 9, 64):
            inputs = [(list(range(100, 100 + rows)), ctx - 1, table, rows)] if rows > 1 else [([100], ctx - 1, table)]
            ids, pos, meta = runner.prepare(inputs)
            for _ in range(3):
                runner.forward(ids, pos, meta)
            start, n = time.perf_counter(), 10
            for _ in range(n):
                runner.forward(ids, pos, meta)
            ms[rows] = (time.perf_counter() - start) / n * 1000
        print(" ".join(f"rows {r}: {v:.2f} ms" for r, v in ms.items()), f"| 9 rows / 1 row {ms[9] / ms[1]:.2f}", flush=True)
