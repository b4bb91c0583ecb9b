"""Single-stream decode (one 128-token prompt, 128 output tokens) `--runs` times per peer, the peers
taken in turn, optionally beside N `yes > /dev/null` processes: `python -m nvllm.tools.bench
--workload single-stream` once per run. One JSON line per run on stdout (decode tok/s, wall,
load average and run queue before and after); each run's bench JSON is kept under --out.

    python single_stream.py --runs 10 --peers nvllm,llamacpp --out raw/idle
    python single_stream.py --runs 3 --yes 2 --peers nvllm,llamacpp --out raw/yes2

llama.cpp (llama-cpp-python's OpenMP build) runs on the same libgomp as torch in the bench's child
process, so it gets libgomp's default wait here (GOMP_SPINCOUNT=300000 spelled out, which nvllm
then leaves alone): the wait it has on its own. --llamacpp-env changes that."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def loadavg() -> str:
    return open("/proc/loadavg").read().strip()


def run(peer: str, env: dict, out: Path) -> dict:
    before, start = loadavg(), time.time()
    done = subprocess.run([sys.executable, "-m", "nvllm.tools.bench", "--workload", "single-stream", "--peers", peer,
                           "--llamacpp-weights", "f32", "--out", str(out)], env=env, capture_output=True, text=True)
    line = {"peer": peer, "wall_s": round(time.time() - start, 1), "loadavg_before": before,
            "loadavg_after": loadavg(), "rc": done.returncode}
    if done.returncode == 0:
        result = json.loads(out.read_text())
        runs = [r for r in result["runs"] if r.get("peer") == peer] if "runs" in result else []
        line["decode_tok_s"] = [r.get("decode_tok_s") for r in runs]
    else:
        line["stderr"] = done.stderr[-1500:]
    return line


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--peers", default="nvllm,llamacpp")
    parser.add_argument("--yes", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--llamacpp-env", default="GOMP_SPINCOUNT=300000")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    envs = {"nvllm": base, "llamacpp": {**base, **dict(kv.split("=", 1) for kv in args.llamacpp_env.split(",") if kv)}}
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.yes)]
    try:
        time.sleep(2 if hogs else 0)
        for i in range(args.runs):
            for peer in args.peers.split(","):
                line = run(peer, envs[peer], out / f"{peer}-{i}.json")
                print(json.dumps({"run": i, "yes": args.yes, **line}), flush=True)
    finally:
        for hog in hogs:
            hog.kill()


if __name__ == "__main__":
    main()
