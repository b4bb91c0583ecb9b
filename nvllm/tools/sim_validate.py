"""`python -m nvllm.tools.sim_validate MEASURED_SWEEP SIMULATED_SWEEP --out DIR`: how far a simulated
sweep (forward=simulated) is from the same sweep measured for real.

Runs are paired by their overrides, leaving out the forward strategy's (`forward`, `forward.*`).
For each pair and each metric below it writes the measured value, the simulated one and the
error (simulated - measured) / measured: validation.md (tables), validation.csv, validation.png
(simulated against measured, one panel per metric, the line y = x and the ±10 % / ±20 % bands).
A pair is "below the knee" when the measured run completed requests at least KNEE_FRACTION as fast
as they arrived. `--record PROFILE` writes the median absolute errors into the profile's
`validation`, so every later run with that profile carries its measured error in metrics.json.
`--repeat` compares two measured sweeps of the same configuration instead: how far apart two
measurements are is the noise a simulation's error is judged against."""
import argparse
import csv
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

from nvllm.tools.report import load_runs

# metrics.json key -> title
METRICS = {
    "request_throughput": "request throughput (req/s)",
    "output_throughput": "output throughput (tok/s)",
    "median_ttft_ms": "TTFT p50 (ms)", "p99_ttft_ms": "TTFT p99 (ms)",
    "median_tpot_ms": "TPOT p50 (ms)", "p99_tpot_ms": "TPOT p99 (ms)",
    "median_itl_ms": "ITL p50 (ms)", "p99_itl_ms": "ITL p99 (ms)",
}
KNEE_FRACTION = 0.8


def pairs(measured_dir: Path, simulated_dir: Path, repeat: bool = False) -> list[dict]:
    """Matched (measured, simulated) runs that both finished, in the measured sweep's order;
    `repeat`: the second sweep is measured too."""
    def key(run):
        return tuple(sorted((k, v) for k, v in run["settings"].items() if k != "forward" and not k.startswith("forward.")))

    simulated = {key(r): r for r in load_runs(simulated_dir).to_dict("records") if r["status"] == "ok"}
    out = []
    for r in load_runs(measured_dir).to_dict("records"):
        s = simulated.get(key(r))
        if r["status"] != "ok" or s is None:
            continue
        if r["metrics"].get("simulated") or bool(s["metrics"].get("simulated")) == repeat:
            raise SystemExit(f"{measured_dir} must hold measured runs and {simulated_dir} "
                             f"{'measured ones too (--repeat)' if repeat else 'simulated ones (forward=simulated)'}; "
                             f"run {r['dir']} / {s['dir']} is not so")
        m = r["metrics"]
        below = m["request_throughput"] >= KNEE_FRACTION * m["achieved_request_rate"] if m.get("achieved_request_rate") else True
        out.append({"config": dict(key(r)), "measured": m, "simulated": s["metrics"], "below_knee": below,
                    "errors": {k: _error(s["metrics"].get(k), m.get(k)) for k in METRICS}})
    if not out:
        raise SystemExit(f"no run of {simulated_dir} matches one of {measured_dir} (same overrides but forward.*)")
    return out


def _error(simulated, measured):
    if simulated is None or not measured:
        return None
    return (simulated - measured) / measured


def summary(matched: list[dict]) -> dict:
    """Median and largest absolute error per metric, over every pair and over those below the knee."""
    out = {}
    for subset, rows in (("all", matched), ("below_knee", [p for p in matched if p["below_knee"]])):
        out[subset] = {"pairs": len(rows)}
        for k in METRICS:
            errors = [abs(p["errors"][k]) for p in rows if p["errors"][k] is not None]
            out[subset][k] = {"median_abs_error": statistics.median(errors), "max_abs_error": max(errors)} if errors else None
    return out


def write(matched: list[dict], out_dir: Path, measured_dir: Path, simulated_dir: Path, repeat: bool = False) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = summary(matched)
    axes = [k for k in matched[0]["config"] if len({str(p["config"].get(k)) for p in matched}) > 1]
    sim = matched[0]["simulated"].get("simulation") or {}
    what = "a second measurement (a repeat, not a simulation)" if repeat else \
        (f"SIMULATED ({sim.get('cost_model')}{', ' + str(sim.get('profile')) if sim.get('profile') else ''}, "
         f"{'calibrated' if sim.get('calibrated') else 'UNCALIBRATED'})")
    lines = [f"# {'MEASURED again' if repeat else 'SIMULATED'} against MEASURED: {simulated_dir.name} vs {measured_dir.name}", "",
             f"Measured: `{measured_dir}`; against it: `{simulated_dir}`, {what}. "
             f"Error = (second - measured) / measured. "
             f"Below the knee: the measured run completed requests at least {KNEE_FRACTION:.0%} as fast as they arrived.",
             "", "## Median |error| (largest in brackets)", "",
             "| metric | all pairs | below the knee |", "|---|---|---|"]
    for k, title in METRICS.items():
        cells = [(f"{v['median_abs_error']:.1%} [{v['max_abs_error']:.0%}]" if (v := result[s][k]) else "—")
                 for s in ("all", "below_knee")]
        lines.append(f"| {title} | {cells[0]} | {cells[1]} |")
    lines += ["", f"{result['all']['pairs']} pairs, {result['below_knee']['pairs']} below the knee.", "",
              f"## Every pair: measured / {'measured again' if repeat else 'SIMULATED'} (error)", "",
              "| " + " | ".join([*(f"`{a}`" for a in axes), "below knee", *METRICS.values()]) + " |",
              "|" + "---|" * (len(axes) + 1 + len(METRICS))]
    for p in matched:
        cells = [f"{_fmt(p['measured'].get(k))} / {_fmt(p['simulated'].get(k))} ({_pct(p['errors'][k])})" for k in METRICS]
        lines.append("| " + " | ".join([*(str(p["config"].get(a)) for a in axes), "yes" if p["below_knee"] else "no", *cells]) + " |")
    try:
        lines += ["", f"![simulated against measured]({plot(matched, out_dir / 'validation.png', repeat)})"]
    except ImportError:
        pass
    (out_dir / "validation.md").write_text("\n".join(lines) + "\n")
    with (out_dir / "validation.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*axes, "below_knee", *(f"{k}_{s}" for k in METRICS for s in ("measured", "simulated", "error"))])
        for p in matched:
            w.writerow([*(p["config"].get(a) for a in axes), p["below_knee"],
                        *(x for k in METRICS for x in (p["measured"].get(k), p["simulated"].get(k), p["errors"][k]))])
    return result


def plot(matched: list[dict], path: Path, repeat: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(2, 4, figsize=(18, 8.5))
    for panel, (k, title) in zip(panels.flat, METRICS.items()):
        for below, colour, label in ((True, "tab:blue", "below the knee"), (False, "tab:red", "past the knee")):
            pts = [(p["measured"][k], p["simulated"][k]) for p in matched
                   if p["below_knee"] == below and p["measured"].get(k) and p["simulated"].get(k)]
            if pts:
                panel.scatter(*zip(*pts), color=colour, label=label, s=22)
        values = [v for p in matched for v in (p["measured"].get(k), p["simulated"].get(k)) if v]
        if values:
            lo, hi = min(values) / 1.3, max(values) * 1.3
            panel.plot([lo, hi], [lo, hi], color="black", linewidth=1)
            for band, style in ((0.1, "--"), (0.2, ":")):
                panel.plot([lo, hi], [lo * (1 + band), hi * (1 + band)], color="grey", linestyle=style, linewidth=1)
                panel.plot([lo, hi], [lo * (1 - band), hi * (1 - band)], color="grey", linestyle=style, linewidth=1)
            panel.set_xscale("log")
            panel.set_yscale("log")
        panel.set_title(title)
        panel.set_xlabel("measured")
        panel.set_ylabel("measured again" if repeat else "SIMULATED")
        panel.grid(alpha=0.3, which="both")
    panels.flat[0].legend(fontsize="small")
    fig.suptitle(f"{'MEASURED AGAIN' if repeat else 'SIMULATED'} against MEASURED, one point per run "
                 f"(line: equal; dashed ±10 %, dotted ±20 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _pct(x) -> str:
    return "—" if x is None else f"{x:+.0%}"


def record(profile_path: Path, result: dict, measured_dir: Path, simulated_dir: Path, out_dir: Path):
    """The measured error, into the profile: metrics.json of every run that uses it then carries it."""
    profile = json.loads(profile_path.read_text())
    profile["validation"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "measured": str(measured_dir), "simulated": str(simulated_dir),
                             "table": str(out_dir / "validation.md"), **result}
    profile_path.write_text(json.dumps(profile, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.sim_validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("measured", type=Path, help="a sweep directory of measured runs")
    parser.add_argument("simulated", type=Path, help="the same sweep with forward=simulated")
    parser.add_argument("--out", type=Path, help="where to write validation.md/.csv/.png (default: the simulated sweep)")
    parser.add_argument("--record", type=Path, metavar="PROFILE", help="write the measured errors into this profile")
    parser.add_argument("--repeat", action="store_true", help="the second sweep is measured too: the noise floor")
    args = parser.parse_args(argv)
    if args.repeat and args.record:
        parser.error("--record writes a simulation's error into its profile; a --repeat has none")
    out_dir = args.out or args.simulated
    matched = pairs(args.measured, args.simulated, args.repeat)
    result = write(matched, out_dir, args.measured, args.simulated, args.repeat)
    if args.record:
        record(args.record, result, args.measured, args.simulated, out_dir)
    print((out_dir / "validation.md").read_text())
    print(f"validation: {out_dir / 'validation.md'}" + (f"; errors recorded in {args.record}" if args.record else ""))


if __name__ == "__main__":
    main()
