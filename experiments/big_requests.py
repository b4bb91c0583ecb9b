"""What big requests cost a running stream (issue 23): a real `python -m nvllm.serve` of SmolLM2,
one greedy stream decoding, and meanwhile, one after another: a 50 MB body (over
serve.max_body_bytes), a 1 MB prompt (over serve.max_prompt_chars) and the largest prompt the
default limits let in (16 x max_model_len characters: tokenised in the worker processes, then too
many tokens for max_model_len). For each: its status, how long it took, and how many tokens the
stream got meanwhile against what its own pace before (median gap) predicts — a ratio within one
run, so the shared machine's load affects both sides — and the server's memory (every process of
it, RSS) before and at its peak.

    python experiments/big_requests.py --out experiments/results/<date>-<machine>/big_requests
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

PROMPT = "The three primary colours are"


def start_server(run_dir: Path):
    proc = subprocess.Popen([sys.executable, "-m", "nvllm.serve", "serve.port=0", f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if m := re.search(r"ready on (http://\S+)", line):
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
            return proc, m.group(1), lines
    raise SystemExit("the server did not start:\n" + "".join(lines))


def rss_mib(pid: int) -> float:
    """The resident memory of the server's process group (its tokenizer workers and ranks too; Linux)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid:  # the process group (the server runs in a session of its own)
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    proc, url, lines = start_server(args.out / "server_run")
    try:
        max_model_len = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["max_model_len"]
        times, stop = [], threading.Event()

        def stream():
            body = {"prompt": PROMPT, "max_tokens": max_model_len - 16, "temperature": 0, "ignore_eos": True,
                    "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=3600) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        times.append(time.perf_counter())
                    if stop.is_set():
                        break

        peak = [0.0]

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(proc.pid))
                time.sleep(0.05)

        reader = threading.Thread(target=stream)
        reader.start()
        while len(times) < 30:
            time.sleep(0.01)
        pace = statistics.median(b - a for a, b in zip(times[5:], times[6:]))
        sampler = threading.Thread(target=sample, daemon=True)
        cases = {
            "50 MB body": b'{"prompt": "' + b"word " * 10_000_000 + b'", "max_tokens": 4}',
            "1 MB prompt": json.dumps({"prompt": "word " * 200_000, "max_tokens": 4}).encode(),
        }
        largest = json.dumps({"prompt": ("word " * (16 * max_model_len))[:16 * max_model_len], "max_tokens": 4}).encode()
        for i in range(3):  # three times: one figure on a shared machine is one draw of its load
            cases[f"largest prompt the limits let in, #{i + 1}"] = largest
        results = []
        sampler.start()
        for name, body in cases.items():
            before = rss_mib(proc.pid)
            peak[0] = before
            start = time.perf_counter()
            try:
                response = httpx.post(f"{url}/v1/completions", content=body, timeout=3600,
                                      headers={"content-type": "application/json"})
                status, error = response.status_code, response.json().get("error", {}).get("message", "")[:200]
            except httpx.TransportError as e:  # the server answered and closed while the body was still sent
                status, error = None, f"{type(e).__name__}: {e}"[:200]
            end = time.perf_counter()
            during = sum(start <= t <= end for t in times)
            results.append({"request": name, "body_bytes": len(body), "status": status, "error": error,
                            "seconds": round(end - start, 3), "stream_tokens_during": during,
                            "stream_tokens_at_its_pace": round((end - start) / pace, 1),
                            "server_rss_mib_before": round(before), "server_rss_mib_peak": round(peak[0])})
            time.sleep(1.0)
        results.append({"stream_median_gap_ms": round(pace * 1000, 1), "stream_tokens_total": len(times),
                        "server_rss_mib_after": round(rss_mib(proc.pid))})
        stop.set()
        reader.join(60)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
    (args.out / "result.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "server.log").write_text("".join(lines))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
