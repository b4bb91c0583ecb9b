"""The device check's parts, each in its own process under its own time cap, so one slow part
cannot eat the others: the GPU tests, greedy parity with transformers (gpu_parity.py), the Triton
weight-only matmuls' and fused MoE's tests and parity (gpu_kernels.py), a
torch.profiler trace of one decode step of nano-vllm's benchmark at full batch (gpu_trace.py), the
benchmark itself (bench_gpu.py; the two share one checkpoint, written outside --out) and profiles
for forward=simulated, with the benchmark simulated from one of them (gpu_profile.py). Writes
check.json under --out and prints one table last, with whatever finished when a part hit its cap.
Run through experiments/gpu_check.sh.

    python experiments/gpu_check.py --out DIR [--tests DIR] [--smoke]
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# seconds per part: under 9.5 minutes with the install
BUDGETS = dict(tests=60, parity=80, kernels=100, trace=60, bench=130, profile=80)
SMOKE_BUDGETS = dict(tests=120, parity=240, kernels=240, trace=120, bench=300, profile=240)
# the kernels part runs these test files itself (their many compiles would crowd the tests part's cap)
KERNEL_TESTS = ("kernels/test_triton_moe.py", "kernels/test_triton_quantized.py")


def run_part(name: str, cmd: list[str], budget: float, out: Path) -> dict:
    print(f"== {name} (cap {budget:.0f} s): {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    log = (out / f"{name}.log").open("w")
    try:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=budget)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timed out at {budget:.0f} s"
    log.close()
    lines = (out / f"{name}.log").read_text().splitlines()
    return dict(part=name, status=status, seconds=round(time.perf_counter() - start, 1), last_lines=lines[-40:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tests", default=str(HERE.parent / "tests"), help="the test tree to run with -m gpu")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny workloads: checks the check")
    parser.add_argument("--parts", default="tests,parity,kernels,trace,bench,profile")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = SMOKE_BUDGETS if args.smoke else BUDGETS
    smoke = ["--smoke"] if args.smoke else []
    py = sys.executable
    scratch = Path(tempfile.mkdtemp(prefix="nvllm-gpu-check-"))  # the benchmark's checkpoint: not for $OUT
    checkpoint = ["--checkpoint", str(scratch / "ckpt")]
    commands = {
        "tests": [py, "-m", "pytest", args.tests, "-m", "gpu", "-q", "-p", "no:cacheprovider",
                  *(f"--ignore={Path(args.tests) / f}" for f in KERNEL_TESTS)],
        "parity": [py, str(HERE / "gpu_parity.py"), "--out", str(out / "parity"), *smoke],
        # the kernels' tests capped at 35 s, then four parity cells
        "kernels": [py, str(HERE / "gpu_kernels.py"), "--out", str(out / "kernels"),
                    "--tests", *(str(Path(args.tests) / f) for f in KERNEL_TESTS),
                    "--tests-budget-s", "35", *smoke],
        "trace": [py, str(HERE / "gpu_trace.py"), "--out", str(out / "trace"), *checkpoint, *smoke],
        # per configuration: 35 s of generate (room for the defaults to finish on one datacenter GPU; a slower configuration reports a lower bound), 40 s of set-up
        "bench": [py, str(HERE / "bench_gpu.py"), "--out", str(out / "bench"), "--budget-s", "35",
                  "--setup-budget-s", "40", *checkpoint, *smoke],
        # two shapes, 20 s of timing each, then the benchmark simulated from the first against the bench part's run
        "profile": [py, str(HERE / "gpu_profile.py"), "--out", str(out / "profile"), "--bench", str(out / "bench"),
                    "--budget-s", "20", *smoke],
    }
    parts = []
    try:
        for name in args.parts.split(","):
            parts.append(run_part(name, commands[name], budgets[name], out))
            (out / "check.json").write_text(json.dumps(dict(parts=parts), indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _attach(out, parts)
    print("\n== GPU check: parts ==" if not args.smoke else "\n== GPU check (smoke: CPU) ==")
    for p in parts:
        print(f"{p['part']:<8} {p['status']:<22} {p['seconds']:>6.1f} s   {_summary(p)}")
    for p in parts:
        if p.get("table"):
            print(f"\n-- {p['part']} --\n" + "\n".join(p["table"]))


def _attach(out: Path, parts: list[dict]):
    """Each part's own table (the lines after its last blank line) and JSON, into check.json."""
    for p in parts:
        lines = p["last_lines"]
        if p["part"] != "tests" and "" in lines:
            p["table"] = lines[len(lines) - lines[::-1].index(""):]
        for path in (out / "parity" / "parity.json", out / "kernels" / "parity.json", out / "trace" / "summary.json",
                     out / "bench" / "bench_gpu.json", out / "profile" / "profile.json"):
            if path.parent.name == p["part"] and path.exists():
                p["results"] = json.loads(path.read_text())
                if "table" not in p and isinstance(p["results"], list):  # cut off by its cap: list what finished
                    p["table"] = [json.dumps({k: v for k, v in r.items() if k not in ("stderr", "first_mismatch")})
                                  for r in p["results"]]
    (out / "check.json").write_text(json.dumps(dict(parts=parts), indent=2))


def _summary(part: dict) -> str:
    lines = [line for line in part["last_lines"] if line.strip()]
    if part["part"] == "tests":
        return lines[-1] if lines else ""
    results = part.get("results", [])
    if part["part"] == "profile":
        b = results.get("bench_simulated") if isinstance(results, dict) else None
        return f"{len(results.get('profiles', {}))} profiles" + (f", bench SIMULATED {b['tok_s']:.0f} tok/s" if b else "") \
            if isinstance(results, dict) else ""
    if part["part"] in ("parity", "kernels"):
        cells = [r for r in results if "status" in r]
        tests = [f"tests {r['tests']}: {r['summary']}" for r in results if "tests" in r]
        counts = [f"{sum(r['status'] == s for r in cells)} {s}" for s in ("match", "MISMATCH", "refused", "error")
                  if any(r["status"] == s for r in cells)]
        return ", ".join(tests + counts)
    if part["part"] == "trace":
        if "device_busy_ms_per_step" not in results:
            return f"{results['wall_ms_per_step']:.2f} ms/step (no device)" if results else ""
        return (f"{results['wall_ms_per_step']:.2f} ms/step, device busy {results['device_busy_ms_per_step']:.2f}, "
                f"host gap {results['host_gap_ms_per_step']:.2f}")
    done = [r for r in results if "tok_s" in r]
    return ", ".join(f"{r['config']} {'>=' if r.get('lower_bound') else ''}{r['tok_s']:.0f} tok/s" for r in done)


if __name__ == "__main__":
    main()
