"""What a scored row costs the C step (forward=fused_cpu): one sequence's forward pass with 1, 2, 5
and 9 query rows (a decode, and verify steps of 1, 4 and 8 drafts), each row's logits computed,
at contexts of 16, 600 and 1500 tokens; SmolLM2-135M, float32, the default threads. Prints ms a
call, the mean of 15 after 3 warm-up calls. --ctx, --rows and --repeats choose other cases (the
avx512/ run: --ctx 200 --rows 1 9 64 --repeats 3 --calls 10, which also prints the last row count's
cost over the first's).

    python row_cost.py > row_cost.out"""
import argparse
import time

from nvllm import LLM

parser = argparse.ArgumentParser()
parser.add_argument("--ctx", type=int, nargs="+", default=[16, 600, 1500])
parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 5, 9])
parser.add_argument("--repeats", type=int, default=1)
parser.add_argument("--calls", type=int, default=15)
args = parser.parse_args()

with LLM("smollm2", max_model_len=2048) as llm:
    runner = llm.engine.executor
    table = list(range(8))  # blocks of 256 tokens: room for every context below
    for ctx in args.ctx:
        for _ in range(args.repeats):
            ms = {}
            for rows in args.rows:
                inputs = [(list(range(100, 100 + rows)), ctx - 1, table, rows)] if rows > 1 else [([100], ctx - 1, table)]
                ids, pos, meta = runner.prepare(inputs)
                for _ in range(3):
                    runner.forward(ids, pos, meta)
                start, n = time.perf_counter(), args.calls
                for _ in range(n):
                    runner.forward(ids, pos, meta)
                ms[rows] = (time.perf_counter() - start) / n * 1000
                if args.repeats == 1:
                    print(f"ctx {ctx:5d} rows {rows}: {ms[rows]:.2f} ms", flush=True)
            if args.repeats > 1:
                first, last = args.rows[0], args.rows[-2 if len(args.rows) > 2 else -1]
                print(" ".join(f"rows {r}: {v:.2f} ms" for r, v in ms.items()),
                      f"| {last} rows / {first} row {ms[last] / ms[first]:.2f}", flush=True)
