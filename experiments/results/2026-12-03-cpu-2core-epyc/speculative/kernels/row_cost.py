"""What a scored row costs the C step (forward=fused_cpu): one sequence's forward pass with 1, 2, 5
and 9 query rows (a decode, and verify steps of 1, 4 and 8 drafts), each row's logits computed,
at contexts of 16, 600 and 1500 tokens; SmolLM2-135M, float32, the default threads. Prints ms a
call, the mean of 15 after 3 warm-up calls.

    python row_cost.py > row_cost.out"""
import time

from nvllm import LLM

with LLM("smollm2", max_model_len=2048) as llm:
    runner = llm.engine.model_runner
    table = list(range(8))  # blocks of 256 tokens: room for every context below
    for ctx in (16, 600, 1500):
        for rows in (1, 2, 5, 9):
            inputs = [(list(range(100, 100 + rows)), ctx - 1, table, rows)] if rows > 1 else [([100], ctx - 1, table)]
            ids, pos, meta = runner.prepare(inputs)
            for _ in range(3):
                runner.forward(ids, pos, meta)
            start, n = time.perf_counter(), 15
            for _ in range(n):
                runner.forward(ids, pos, meta)
            print(f"ctx {ctx:5d} rows {rows}: {(time.perf_counter() - start) / n * 1000:.2f} ms", flush=True)
