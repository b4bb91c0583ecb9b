"""`python -m nvllm.tools.report <sweep dir>`: one table row per configuration of a sweep, and a plot
per swept axis; a sweep over `workload.request_rate` also gets the latency-throughput curve.

Reads every run's metrics.json under the sweep directory. A configuration is a run's overrides
without `repeat`; the swept axes are the overrides that differ between runs. Each row gives the
median and min-max over repeats; runs that were skipped or failed are listed with their reason,
never dropped. Writes report.md, report.csv and by_<axis>.png (needs matplotlib: the `report`
extra) into the sweep directory or --out, and load.png when `workload.request_rate` is swept:
p99 TTFT, p99 ITL and goodput against the achieved request rate, a line per configuration."""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

# column -> (title, unit scale, how to read it from metrics.json); the first is the main metric
METRICS = {
    "output_tok_s": ("output tok/s", 1, lambda m: m["output_tok_s"]),
    "ttft_ms": ("TTFT p50 (ms)", 1e3, lambda m: m["ttft_s"]["median"]),
    "tpot_ms": ("TPOT p50 (ms)", 1e3, lambda m: m["tpot_s"]["median"]),
    "peak_memory_gib": ("peak memory (GiB)", 2**-30, lambda m: m["peak_memory_bytes"].get(
        "cuda_max_allocated_bytes", m["peak_memory_bytes"]["host_max_rss_bytes"])),
    "prefix_hit_rate": ("prefix hit rate", 1, lambda m: m["prefix_cache_hit_rate"]),
    "preemptions": ("preemptions", 1, lambda m: m["preemptions"]),
    "achieved_rate": ("achieved req/s", 1, lambda m: m["achieved_request_rate"]),
    "p99_ttft_ms": ("TTFT p99 (ms)", 1, lambda m: m["p99_ttft_ms"]),
    "p99_itl_ms": ("ITL p99 (ms)", 1, lambda m: m["p99_itl_ms"]),
    "goodput": ("goodput (req/s)", 1, lambda m: m["request_goodput"]),
    "req_throughput": ("completed req/s", 1, lambda m: m["request_throughput"]),
}
PLOTTED = ("output_tok_s", "ttft_ms", "tpot_ms")
LOAD_AXIS, LOAD_PLOTTED = "workload.request_rate", ("p99_ttft_ms", "p99_itl_ms", "goodput")


def load_runs(sweep_dir: Path) -> list[dict]:
    runs = []
    for path in sorted(sweep_dir.rglob("metrics.json"), key=lambda p: _job_order(p, sweep_dir)):
        m = json.loads(path.read_text())
        overrides = m.get("overrides")
        if overrides is None:  # written before runs recorded their overrides: Hydra's copy
            from omegaconf import OmegaConf

            overrides = list(OmegaConf.load(path.parent / ".hydra" / "overrides.yaml"))
        settings = dict(o.lstrip("+~").split("=", 1) for o in overrides)
        runs.append({"dir": str(path.parent.relative_to(sweep_dir)), "metrics": m,
                     "status": m.get("status", "ok"), "reason": m.get("reason", ""),
                     "repeat": settings.pop("repeat", "0"), "settings": settings})
    return runs


def _job_order(path: Path, root: Path):
    parts = path.parent.relative_to(root).parts
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts]


def summarise(runs: list[dict]) -> tuple[list[str], dict, list[dict]]:
    """(swept axes, overrides common to every run, one row per configuration in sweep order)."""
    keys = list(dict.fromkeys(k for r in runs for k in r["settings"]))
    axes = [k for k in keys if len({r["settings"].get(k) for r in runs}) > 1]
    fixed = {k: runs[0]["settings"][k] for k in keys if k not in axes}
    rows: dict[tuple, dict] = {}
    for r in runs:
        config = tuple(r["settings"].get(a, "") for a in axes)
        row = rows.setdefault(config, {"config": dict(zip(axes, config)), "runs": [], "values": {}})
        row["runs"].append(r)
    for row in rows.values():
        ok = [r["metrics"] for r in row["runs"] if r["status"] == "ok"]
        for name, (_, scale, read) in METRICS.items():
            values = [v * scale for v in (_read(read, m) for m in ok) if v is not None]
            row["values"][name] = (statistics.median(values), min(values), max(values)) if values else None
        statuses = sorted({r["status"] for r in row["runs"]})
        row["status"] = "ok" if statuses == ["ok"] else "/".join(statuses)
        row["reason"] = "; ".join(dict.fromkeys(r["reason"] for r in row["runs"] if r["reason"]))
    return axes, fixed, list(rows.values())


def _read(read, m):
    try:
        return read(m)
    except (KeyError, TypeError):
        return None


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _cell(v) -> str:
    if v is None:
        return "—"
    med, lo, hi = map(_fmt, v)
    return med if lo == hi else f"{med} [{lo}–{hi}]"


def write_csv(path: Path, axes: list[str], rows: list[dict]):
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        stats = [f"{name}_{s}" for name in METRICS for s in ("median", "min", "max")]
        out.writerow([*axes, "status", "runs_ok", "runs", *stats, "reason", "run_dirs"])
        for row in rows:
            values = [x for name in METRICS for x in (row["values"][name] or ("", "", ""))]
            ok = sum(r["status"] == "ok" for r in row["runs"])
            out.writerow([*row["config"].values(), row["status"], ok, len(row["runs"]), *values, row["reason"],
                          " ".join(r["dir"] for r in row["runs"])])


def write_markdown(path: Path, sweep_dir: Path, runs: list[dict], axes, fixed, rows, plots: list[str]):
    ok = [r for r in runs if r["status"] == "ok"]
    counts = ", ".join(f"{sum(r['status'] == s for r in runs)} {s}" for s in ("ok", "skipped", "failed"))
    title = f"{fixed['experiment']} ({sweep_dir.name})" if "experiment" in fixed else sweep_dir.name
    lines = [f"# Sweep report: {title}", "",
             f"{len(runs)} runs ({counts}) in `{sweep_dir}`; swept: {', '.join(f'`{a}`' for a in axes) or 'nothing'}.",
             f"Set for every run: {', '.join(f'`{k}={v}`' for k, v in fixed.items()) or 'nothing'}.",
             "Cells: median [min–max] over repeats (`repeat=`) of each run's value; for TTFT and TPOT that "
             "value is the run's median over its requests. Each run's metrics.json (in `<sweep dir>/<run>/`) "
             "holds its effective and requested configuration."]
    if ok:
        m = ok[0]["metrics"]
        lines.append(f"Device: {m['device']}; torch {m['versions'].get('torch')}, nvllm {m['versions'].get('nvllm')}.")
    header = [*(f"`{a}`" for a in axes), "runs", *(METRICS[n][0] for n in METRICS)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        n_ok = sum(r["status"] == "ok" for r in row["runs"])
        cells = [_cell(row["values"][n]) for n in METRICS] if n_ok else [f"**{row['status']}**"] + [""] * (len(METRICS) - 1)
        lines.append("| " + " | ".join([*row["config"].values(), f"{n_ok}/{len(row['runs'])}", *cells]) + " |")
    lines += _by_priority(axes, rows)
    not_ok = [r for r in runs if r["status"] != "ok"]
    if not_ok:
        lines += ["", "## Runs that did not finish", "", "| run | status | configuration | reason |", "|---|---|---|---|"]
        for r in not_ok:
            config = " ".join(f"{k}={v}" for k, v in r["settings"].items() if k in axes) + f" repeat={r['repeat']}"
            lines.append(f"| `{r['dir']}` | {r['status']} | `{config}` | {r['reason'].replace('|', '/')} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def _by_priority(axes: list[str], rows: list[dict]) -> list[str]:
    """TTFT per request priority, for workloads that assign priorities (workload.priorities)."""
    per_row = []
    for row in rows:
        ttft: dict[str, list[float]] = {}
        for r in row["runs"]:
            for prio, stats in (r["metrics"].get("ttft_s_by_priority") or {}).items():
                ttft.setdefault(prio, []).append(stats["median"] * 1e3)
        per_row.append(ttft)
    prios = sorted({p for t in per_row for p in t}, key=int)
    if not prios:
        return []
    lines = ["", "## TTFT p50 (ms) by request priority (smaller is more urgent)", "",
             "| " + " | ".join([*(f"`{a}`" for a in axes), *(f"priority {p}" for p in prios)]) + " |",
             "|" + "---|" * (len(axes) + len(prios))]
    for row, ttft in zip(rows, per_row):
        cells = [_cell((statistics.median(v), min(v), max(v))) if (v := ttft.get(p)) else "—" for p in prios]
        lines.append("| " + " | ".join([*row["config"].values(), *cells]) + " |")
    return lines


def plot(out_dir: Path, title: str, axes: list[str], rows: list[dict]) -> list[str]:
    """One PNG per swept axis: the plotted metrics against that axis, a series per combination of
    the other axes (lines when the axis is numeric); markers at the median, bars from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis in axes:
        xs = list(dict.fromkeys(row["config"][axis] for row in rows))
        series: dict[str, dict] = {}
        missing: dict[str, list[str]] = {}
        for row in rows:
            label = ", ".join(f"{a}={v}" for a, v in row["config"].items() if a != axis) or axis
            series.setdefault(label, {})[row["config"][axis]] = row["values"]
            if row["values"][PLOTTED[0]] is None:
                missing.setdefault(label, []).append(f"{row['config'][axis]}: {row['status']}")
        series = {f"{k} ({', '.join(missing[k])})" if k in missing else k: v for k, v in series.items()}
        numeric = all(_is_number(x) for x in xs)
        fig, panels = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4), squeeze=False)
        for panel, name in zip(panels[0], PLOTTED):
            for k, (label, by_x) in enumerate(series.items()):
                shift = 0 if numeric else (k - (len(series) - 1) / 2) * 0.3 / max(1, len(series) - 1)
                pts = [(i + shift, by_x[x][name]) for i, x in enumerate(xs) if x in by_x and by_x[x][name] is not None]
                if pts:
                    i, v = zip(*pts)
                    med = [m for m, _, _ in v]
                    err = [[m - lo for m, lo, _ in v], [hi - m for m, _, hi in v]]
                    panel.errorbar(i, med, yerr=err, marker="o", capsize=3, label=label,
                                   linestyle="-" if numeric else "none")
            panel.set_xticks(range(len(xs)), xs)
            panel.set_xlabel(axis)
            panel.set_ylim(bottom=0)
            panel.set_title(METRICS[name][0])
            panel.grid(alpha=0.3)
        fig.suptitle(f"{title}: median and min–max over repeats, by {axis}")
        handles, labels = panels[0][0].get_legend_handles_labels()
        if (len(series) > 1 or missing) and handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
            fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 4), 1, 1))
        else:
            fig.tight_layout()
        name = f"by_{axis}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def plot_load(out_dir: Path, title: str, axes: list[str], rows: list[dict], slo: str) -> list[str]:
    """The latency-throughput curve: LOAD_PLOTTED against the achieved request rate (medians over
    repeats), a line per combination of the other axes, points in order of the configured rate."""
    if LOAD_AXIS not in axes:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        label = ", ".join(f"{a}={v}" for a, v in row["config"].items() if a != LOAD_AXIS) or "runs"
        rate = row["values"]["achieved_rate"]
        if rate is not None:
            series.setdefault(label, []).append((rate[0], row["values"]))
    fig, panels = plt.subplots(1, len(LOAD_PLOTTED), figsize=(5 * len(LOAD_PLOTTED), 4.2), squeeze=False)
    for panel, name in zip(panels[0], LOAD_PLOTTED):
        for label, points in series.items():
            pts = sorted((x, v[name][0]) for x, v in points if v[name] is not None)
            if pts:
                line, = panel.plot(*zip(*pts), marker="o", label=label)
            done = sorted((x, v["req_throughput"][0]) for x, v in points if v["req_throughput"] is not None)
            if name == "goodput" and done:  # what was served at all, whatever its latency
                panel.plot(*zip(*done), linestyle="--", marker=".", color=line.get_color() if pts else None)
        if name == "goodput":
            top = max((x for points in series.values() for x, _ in points), default=1)
            panel.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
            panel.set_ylim(bottom=0)
        else:
            panel.set_yscale("log")
        panel.set_xlabel("achieved request rate (req/s)")
        panel.set_title("goodput (solid), completed (dashed), req/s" + (f"\n{slo}" if slo else "")
                        if name == "goodput" else METRICS[name][0])
        panel.grid(alpha=0.3, which="both")
    fig.suptitle(f"{title}: latency and goodput against load (medians over repeats)")
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
        fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 4), 1, 1))
    fig.savefig(out_dir / "load.png", dpi=110)
    plt.close(fig)
    return ["load.png"]


def _slo(runs: list[dict]) -> str:
    """The SLOs the runs' goodput counts, as text."""
    for r in runs:
        slo = (r["metrics"].get("requested_config") or {}).get("slo") or {}
        given = [f"{k.removesuffix('_ms').upper()} <= {v:g} ms" for k, v in slo.items() if v is not None]
        if given:
            return "SLO: " + ", ".join(given)
    return ""


def _is_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def report(sweep_dir: Path, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(sweep_dir)
    if not runs:
        raise SystemExit(f"no metrics.json under {sweep_dir}: is it the directory a sweep (-m) wrote?")
    axes, fixed, rows = summarise(runs)
    try:
        title = fixed.get("experiment", sweep_dir.name)
        plots = plot(out_dir, title, axes, rows) + plot_load(out_dir, title, axes, rows, _slo(runs))
    except ImportError:
        print("nvllm.tools.report: matplotlib is not installed, so no plots (pip install 'nvllm[report]')", file=sys.stderr)
        plots = []
    write_csv(out_dir / "report.csv", axes, rows)
    write_markdown(out_dir / "report.md", sweep_dir, runs, axes, fixed, rows, plots)
    return out_dir / "report.md"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the directory a sweep wrote (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, help="where to write report.md, report.csv and the plots (default: sweep_dir)")
    args = parser.parse_args(argv)
    path = report(args.sweep_dir, args.out)
    print(path.read_text())
    print(f"report: {path}")


if __name__ == "__main__":
    main()
