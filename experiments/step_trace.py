"""How much of nvllm's Python one default decode step runs: the distinct lines executed (a
sys.settrace count after warm-up), the files they are in, and the line count of the function
bodies they belong to. Defaults: the embedded SmolLM2, fcfs, paged, greedy, sync, no drafter.

    python experiments/step_trace.py [--json OUT] [--list] [override ...]"""
import argparse
import inspect
import json
import os
import sys

import nvllm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the counts here")
    parser.add_argument("--list", action="store_true", help="print the path: file -> functions, in first-call order")
    parser.add_argument("--source", action="store_true", help="print every line executed, by file")
    parser.add_argument("overrides", nargs="*", help="key=value passed to LLM(...)")
    args = parser.parse_args()
    from nvllm import LLM, SamplingParams

    root = os.path.dirname(os.path.abspath(nvllm.__file__))
    overrides = dict(o.split("=", 1) for o in args.overrides)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    with LLM(**overrides) as llm:
        engine = llm.engine
        for i in range(4):
            engine.add_request(str(i), [1 + i, 2, 3, 4, 5, 6, 7], params)
        for _ in range(6):  # the prefill, then decode steps (warm-up)
            engine.step()
        lines, functions = set(), {}

        def tracer(frame, event, arg):
            code = frame.f_code
            if not code.co_filename.startswith(root):
                return None
            functions.setdefault((code.co_filename, code.co_firstlineno, code.co_name), code)
            if event == "line":
                lines.add((code.co_filename, frame.f_lineno))
            return tracer

        sys.settrace(tracer)
        engine.step()
        sys.settrace(None)
    files = sorted({f for f, _ in lines})
    body = set()  # the lines of every function entered (a comprehension's lie inside its function's)
    for code in functions.values():
        try:
            source, first = inspect.getsourcelines(code)
        except (OSError, TypeError):
            continue
        body.update((code.co_filename, first + i) for i in range(len(source)))
    rel = lambda f: os.path.relpath(f, os.path.dirname(root))  # noqa: E731
    per_file = {rel(f): sum(1 for g, _ in lines if g == f) for f in files}
    out = {"distinct_lines": len(lines), "files": len(files), "function_body_lines": len(body),
           "functions": len({(f, n) for f, _, n in functions if not n.startswith("<")}), "file_list": [rel(f) for f in files],
           "lines_per_file": per_file}
    print(json.dumps({k: v for k, v in out.items() if k not in ("file_list", "lines_per_file")}))
    print("lines per file:", ", ".join(f"{f} {n}" for f, n in per_file.items()))
    if args.list:
        for (f, first, name) in functions:
            print(f"  {rel(f)}:{first} {name}")
    if args.source:
        import linecache
        for f, n in sorted(lines):
            print(f"{rel(f)}:{n}: {linecache.getline(f, n).rstrip()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
