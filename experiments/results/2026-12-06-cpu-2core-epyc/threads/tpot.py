"""Median TPOT of `nvllm run workload=random_tiny` under OpenMP wait settings, the settings taken in
turn round after round (so that a change in the machine's other load falls on all of them alike),
optionally beside N `yes > /dev/null` processes. One JSON line per run on stdout, with the load
average and the run queue (/proc/loadavg) before and after.

    python tpot.py --rounds 3 --yes 2 default passive spin3000 threads1
    python tpot.py default passive --workload workload=random_tiny workload.num_seqs=2  # shorter
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

SETTINGS = {  # name: the environment a run gets (on top of one with no OpenMP settings)
    "default": {"GOMP_SPINCOUNT": "300000"},  # libgomp's own default, spelled out
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin300": {"GOMP_SPINCOUNT": "300"},
    "spin1000": {"GOMP_SPINCOUNT": "1000"},
    "spin3000": {"GOMP_SPINCOUNT": "3000"},
    "spin10000": {"GOMP_SPINCOUNT": "10000"},
    "threads1": {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "300000"},
    "threads1-spin3000": {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "3000"},
    "nvllm": {},  # whatever nvllm chooses itself
}


def loadavg() -> str:
    return open("/proc/loadavg").read().strip()


def run(name: str, workload: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(SETTINGS[name])
    before, start = loadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "nvllm.run", *workload, f"hydra.run.dir={tmp}"],
                              env=env, capture_output=True, text=True)
    found = re.search(r"median TPOT ([\d.]+) ms", done.stdout + done.stderr)
    return {"setting": name, "tpot_ms": float(found.group(1)) if found else None, "wall_s": round(time.time() - start, 1),
            "loadavg_before": before, "loadavg_after": loadavg(), "rc": done.returncode}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="+", choices=SETTINGS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--yes", type=int, default=0, help="this many `yes > /dev/null` beside each run")
    parser.add_argument("--workload", nargs="*", default=["workload=random_tiny"], help="nvllm.run overrides")
    args = parser.parse_args()
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.yes)]
    try:
        time.sleep(2 if hogs else 0)
        for r in range(args.rounds):
            for name in args.settings:
                print(json.dumps({"round": r, "yes": args.yes, **run(name, args.workload)}), flush=True)
    finally:
        for hog in hogs:
            hog.kill()


if __name__ == "__main__":
    main()
