"""A serving benchmark client for any OpenAI-compatible server (nvllm.serve, vLLM, SGLang), as
`vllm bench serve`: random token-id prompts (nvllm.run's workload=random) or a ShareGPT file
(`--dataset-name sharegpt --dataset-path ...`: nvllm.run's workload=sharegpt) sent as streamed
/v1/completions at seeded Poisson (or gamma) arrivals (nvllm.workloads.arrival_offsets), measured
on the client side by vLLM's definitions — TTFT, TPOT, ITL, E2EL — with the same function and
names as the engine's own metrics (nvllm.metrics.serving_metrics). A progress bar counts the
finished requests; `--save-result` writes vLLM's flat result JSON. Against nvllm.serve it also
fetches the engine-side numbers of the same requests (GET /metrics/serving), saved beside the
client's under `engine_`-prefixed keys.

    nvllm bench serve --base-url http://127.0.0.1:8000 --request-rate 2 \\
        --num-prompts 32 --random-input-len 128 --random-output-len 32

Needs the `serve` extra (httpx)."""
import argparse
import asyncio
import json
import math
import os
import sys
import time

from nvllm.metrics import RequestTiming, serving_metrics

METRICS = ("ttft", "tpot", "itl", "e2el")
NAMES = {"ttft": "Time to first token", "tpot": "Time per output token (excl. 1st)",
         "itl": "Inter-token latency", "e2el": "End-to-end latency"}


def parse_args(argv=None, prog: str = "python -m nvllm.bench_serving") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server's address")
    p.add_argument("--model", default=None, help="model name to send (default: the server's first, GET /v1/models)")
    p.add_argument("--num-prompts", type=int, default=32, help="requests to send")
    p.add_argument("--dataset-name", choices=("random", "sharegpt"), default="random",
                   help="random token ids, or the conversations of a ShareGPT-format JSON file (--dataset-path)")
    p.add_argument("--dataset-path", default=None, help="the ShareGPT JSON file (--dataset-name sharegpt)")
    p.add_argument("--sharegpt-output-len", type=int, default=None,
                   help="max_tokens of every ShareGPT request (default: the length of the conversation's answer)")
    p.add_argument("--tokenizer", default=None,
                   help="ShareGPT: the tokenizer that measures prompts and answers, a model directory or an nvllm "
                        "model option (default: the served model's name)")
    p.add_argument("--disable-tqdm", action="store_true", help="no progress bar")
    p.add_argument("--request-rate", type=float, default=math.inf,
                   help="requests per second (inf: all at once); arrival gaps are Gamma(burstiness, 1/(rate*burstiness))")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrival gaps (1: Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight (default: no limit)")
    p.add_argument("--random-input-len", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--random-output-len", type=int, default=32, help="max_tokens per request")
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len*(1-r), len*(1+r)]")
    p.add_argument("--max-token-id", type=int, default=10000, help="prompt token ids are drawn below this")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let requests stop at end-of-sequence (default: ignore_eos, every request runs to max_tokens)")
    p.add_argument("--seed", type=int, default=0, help="seeds prompts, lengths and arrivals")
    p.add_argument("--metric-percentiles", default="50,90,99", help="comma-separated percentiles")
    p.add_argument("--goodput", nargs="*", default=[], metavar="METRIC:MS",
                   help="SLOs for request_goodput, e.g. ttft:500 tpot:100 e2el:5000")
    p.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    p.add_argument("--save-result", default=None, metavar="FILE",
                   help="write vLLM's flat result JSON (the client's metrics, per-request arrays, engine_* keys)")
    args = p.parse_args(argv)
    for name in ("num_prompts", "random_input_len", "random_output_len", "max_token_id"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.request_rate > 0 or not args.burstiness > 0:
        p.error("--request-rate and --burstiness must be > 0")
    if not 0 <= args.random_range_ratio < 1:
        p.error(f"--random-range-ratio must be in [0, 1), got {args.random_range_ratio}")
    if args.dataset_name == "sharegpt" and not args.dataset_path:
        p.error("--dataset-name sharegpt needs --dataset-path FILE (a ShareGPT JSON file)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        p.error(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    try:
        args.percentiles = tuple(float(q) for q in args.metric_percentiles.split(","))
        args.slo = {f"{k}_ms": float(v) for k, v in (g.split(":") for g in args.goodput)}
    except ValueError:
        p.error("--metric-percentiles takes numbers like 50,90,99; --goodput takes METRIC:MS like ttft:500")
    if not set(args.slo) <= {f"{m}_ms" for m in ("ttft", "tpot", "e2el")}:
        p.error(f"--goodput metrics are ttft, tpot and e2el, got {', '.join(args.goodput)}")
    return args


def random_workload(args):
    """The bench's requests as `nvllm.run`'s `workload=random` (same generator, same seed: the
    same prompts, lengths and arrivals as the in-process run with these settings)."""
    from omegaconf import OmegaConf

    r = args.random_range_ratio

    def span(n):
        return [max(1, int(n * (1 - r))), int(n * (1 + r))]

    if args.dataset_name == "sharegpt":
        return OmegaConf.create({"name": "sharegpt", "path": args.dataset_path, "num_seqs": args.num_prompts,
                                 "output_len": args.sharegpt_output_len, "max_input_len": 1024, "max_len": 2048,
                                 "chat": False, "seed": args.seed, "ignore_eos": args.ignore_eos,
                                 "request_rate": args.request_rate, "burstiness": args.burstiness})
    return OmegaConf.create({"name": "random", "num_seqs": args.num_prompts, "input_len": span(args.random_input_len),
                             "output_len": span(args.random_output_len), "max_token_id": args.max_token_id,
                             "seed": args.seed, "ignore_eos": args.ignore_eos, "request_rate": args.request_rate,
                             "burstiness": args.burstiness})


def requests_and_arrivals(args, model: str | None = None) -> tuple[list[tuple[list[int] | str, int, int]], list[float]]:
    """(prompt, its length in tokens, max_tokens) per request, and when to send each (seconds after
    the start). The prompts are nvllm.run's `workload=random` or `workload=sharegpt` with these settings."""
    from nvllm.workloads import arrival_offsets, build_requests

    workload = random_workload(args)
    tokenizer = load_tokenizer(args.tokenizer or model) if args.dataset_name == "sharegpt" else None
    prompts, params = build_requests(workload, {"temperature": 0.0}, tokenizer=tokenizer)
    offsets = arrival_offsets(workload, len(prompts)) or [0.0] * len(prompts)
    lengths = [len(tokenizer.encode(p)) if isinstance(p, str) else len(p) for p in prompts]
    return [(p, n, sp.max_tokens) for p, n, sp in zip(prompts, lengths, params)], offsets


def load_tokenizer(name: str):
    """A model directory's tokenizer, or that of an nvllm model option (`smollm2`) or Hugging Face repo id."""
    from transformers import AutoTokenizer

    from nvllm.config import compose, typed_config
    from nvllm.models.weights import resolve_model_path

    model = typed_config("model", compose(model=name).model)
    return AutoTokenizer.from_pretrained(resolve_model_path(model))


async def send(client, model: str, prompt: list[int] | str, input_len: int, max_tokens: int, ignore_eos: bool,
               timeout: float) -> RequestTiming:
    """One streamed completion; a time is taken for every chunk that carries tokens."""
    payload = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
               "stream_options": {"include_usage": True}, "ignore_eos": ignore_eos, "return_token_ids": True}
    timing = RequestTiming(arrival=time.perf_counter(), input_len=input_len)
    counted = 0
    try:
        async with client.stream("POST", "/v1/completions", json=payload, timeout=timeout) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread()).decode()[:300]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                now, data = time.perf_counter(), line[len("data: "):]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                for choice in chunk.get("choices") or []:
                    # a server without return_token_ids: a chunk with text counts as one token
                    n = len(choice["token_ids"]) if "token_ids" in choice else int(bool(choice.get("text")))
                    if n:
                        timing.token_times.append(now)
                        counted += n
                if chunk.get("usage"):
                    timing.output_len = chunk["usage"]["completion_tokens"]
        timing.output_len = timing.output_len or counted
        if not timing.token_times:
            raise RuntimeError("the stream ended without a token")
    except Exception as e:
        timing.success, timing.error = False, f"{type(e).__name__}: {e}"
    return timing


async def benchmark(args) -> dict:
    """vLLM's flat result: the settings, the client's serving metrics with the per-request arrays,
    and the engine's measurement of the same requests under `engine_`-prefixed keys (nvllm.serve)."""
    import httpx
    from tqdm.auto import tqdm

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    key = os.environ.get("NVLLM_API_KEY") or os.environ.get("OPENAI_API_KEY")  # a server with an API key
    async with httpx.AsyncClient(base_url=args.base_url, limits=limits, timeout=30,
                                 headers={"authorization": f"Bearer {key}"} if key else None) as client:
        served = (await client.get("/v1/models")).raise_for_status().json()["data"]
        model = args.model or served[0]["id"]
        finished_before = await _engine_finished(client)
        requests, offsets = requests_and_arrivals(args, model)
        slots = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        bar = tqdm(total=len(requests), desc="Requests", unit="req", disable=args.disable_tqdm, dynamic_ncols=True)

        async def one(prompt, input_len, max_tokens, offset):
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            try:
                if slots is None:
                    return await send(client, model, prompt, input_len, max_tokens, args.ignore_eos, args.timeout)
                async with slots:
                    return await send(client, model, prompt, input_len, max_tokens, args.ignore_eos, args.timeout)
            finally:
                bar.update(1)

        start = time.perf_counter()
        with bar:
            timings = await asyncio.gather(*(one(p, n, m, o) for (p, n, m), o in zip(requests, offsets)))
        duration = time.perf_counter() - start
        client_side = serving_metrics(timings, duration, args.percentiles, args.slo or None, detailed=True,
                                      request_rate=args.request_rate, open_loop=True)
        engine_side = {}
        if finished_before is not None:
            response = await client.get("/metrics/serving", params={
                "skip": finished_before, "percentiles": args.metric_percentiles, "slo": json.dumps(args.slo),
                "request_rate": args.request_rate})
            if response.status_code == 200:
                engine_side = {f"engine_{k}": v for k, v in response.json().items() if not isinstance(v, list)}
    return {"date": time.strftime("%Y%m%d-%H%M%S"), "backend": "openai", "model_id": model,
            "tokenizer_id": args.tokenizer or model if args.dataset_name == "sharegpt" else None,
            "base_url": args.base_url, "dataset_name": args.dataset_name, "dataset_path": args.dataset_path,
            "num_prompts": len(requests), "request_rate": None if math.isinf(args.request_rate) else args.request_rate,
            "burstiness": args.burstiness, "max_concurrency": args.max_concurrency, "seed": args.seed,
            "random_input_len": args.random_input_len, "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio, **client_side, **engine_side}


async def _engine_finished(client) -> int | None:
    """How many requests nvllm's engine had finished before this run (None: not an nvllm server)."""
    try:
        response = await client.get("/health")
        return response.json().get("finished_requests") if response.status_code == 200 else None
    except Exception:
        return None


def table(result: dict, percentiles) -> str:
    """vLLM's result table, the client's column beside the engine's when there is one."""
    c = {k: v for k, v in result.items() if not k.startswith("engine_")}
    e = {k.removeprefix("engine_"): v for k, v in result.items() if k.startswith("engine_")}
    cols = ("client", "engine") if e else ("client",)
    rows = [("Successful requests", "completed", "{:.0f}"), ("Failed requests", "failed", "{:.0f}"),
            ("Benchmark duration (s)", "duration", "{:.2f}"), ("Total input tokens", "total_input_tokens", "{:.0f}"),
            ("Total generated tokens", "total_output_tokens", "{:.0f}"),
            ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
            ("Output token throughput (tok/s)", "output_throughput", "{:.2f}"),
            ("Total token throughput (tok/s)", "total_token_throughput", "{:.2f}"),
            ("Achieved request rate (req/s)", "achieved_request_rate", "{:.2f}")]
    if c.get("request_goodput") is not None:
        rows.append(("Request goodput (req/s)", "request_goodput", "{:.2f}"))
    for m in METRICS:
        rows.append((f"-- {NAMES[m]} (ms)", None, None))
        for stat in ("mean", "median") + tuple(f"p{q:g}" for q in percentiles):
            rows.append((f"{stat.capitalize() if stat[0] != 'p' else stat.upper()} {m.upper()}", f"{stat}_{m}_ms", "{:.2f}"))
    if e.get("mean_queue_wait_ms") is not None:
        rows.append(("-- Engine only (ms)", None, None))
        rows += [("Mean queue wait", "mean_queue_wait_ms", "{:.2f}"), ("P99 queue wait", "p99_queue_wait_ms", "{:.2f}")]

    def cell(side, key, fmt):
        value = side.get(key)
        return "-" if value is None else fmt.format(value)

    lines = [f"{'':<36}" + "".join(f"{col:>12}" for col in cols)]
    for label, key, fmt in rows:
        if key is None:
            lines.append(label)
        else:
            lines.append(f"{label:<36}" + "".join(f"{cell(side, key, fmt):>12}" for side in (c, e)[:len(cols)]))
    return "\n".join(lines)


def main(argv=None, prog: str = "python -m nvllm.bench_serving"):
    args = parse_args(argv, prog)
    try:
        import httpx  # noqa: F401
    except ImportError:
        sys.exit("nvllm.tools.bench_serving needs httpx: pip install 'nvllm[serve]'")
    from nvllm.config import setup

    setup()  # an edge: the workloads (a dataset may come from a plugin) are registered components
    rate = "inf" if math.isinf(args.request_rate) else f"{args.request_rate:g}"
    what = (f"ShareGPT conversations from {args.dataset_path}" if args.dataset_name == "sharegpt" else
            f"~{args.random_input_len} prompt + {args.random_output_len} output tokens each")
    print(f"{args.num_prompts} requests at {rate} req/s (burstiness {args.burstiness:g}) to {args.base_url}, {what}",
          flush=True)
    try:
        result = asyncio.run(benchmark(args))
    except Exception as e:  # the server is not there, or is not an OpenAI-compatible one
        sys.exit(f"bench_serving: cannot benchmark {args.base_url}: {type(e).__name__}: {e}")
    print(table(result, args.percentiles))
    for error in sorted({e for e in result["errors"] if e})[:5]:
        print(f"error: {error}")
    if args.save_result:
        from nvllm.metrics import to_json

        with open(args.save_result, "w") as f:
            f.write(to_json(result))
        print(f"saved: {args.save_result}")
    return result


if __name__ == "__main__":
    main()
