"""`python -m nvllm.tools.spec_report <sweep dir> [--out DIR]`: speculative decoding's ablation
(experiment=speculative) as a table and two plots. For each setting (the workload, and whatever
else the sweep varied besides the drafter and k) x drafter x num_speculative_tokens: decode tok/s
(median over its runs), its ratio to speculative=none's in the same setting and sweep (none's cell
at the same k, which ran beside it; else the median of none's cells), vLLM's acceptance rate and mean acceptance length, and whether every run
produced exactly none's tokens (metrics.json's output_tokens_sha256). Writes speculative.md, speedup_vs_k.png (speed-up against k, a line per
setting and drafter) and acceptance_per_position.png (acceptance rate per draft position, a line
per drafter and k, a panel per setting); plots need matplotlib (the `report` extra)."""
import argparse
import statistics
import sys
from pathlib import Path

from nvllm.tools import report

K = "speculative.num_speculative_tokens"


def load_runs(sweep_dir: Path) -> list[dict]:
    """nvllm.tools.report's rows of a sweep, as dicts."""
    return report.load_runs(sweep_dir).to_dict("records")


def cells(runs: list[dict]) -> dict[tuple, list[dict]]:
    """(setting, drafter, k) -> the metrics of its finished runs, in sweep order. The setting is
    what else the sweep varied: the workload's name, other keys as `key=value`."""
    axes = [k for k in dict.fromkeys(k for r in runs for k in r["settings"])
            if k not in ("speculative", K, "repeat") and len({r["settings"].get(k) for r in runs}) > 1]
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["status"] != "ok":
            continue
        s, m = r["settings"], r["metrics"]
        drafter = s.get("speculative", m["effective_config"]["speculative"]["name"])
        k = int(s.get(K, m["effective_config"]["speculative"].get("num_speculative_tokens", 0)))
        setting = ", ".join(s.get(a, "") if a == "workload" else f"{a.removeprefix('workload.')}={s.get(a, '')}"
                            for a in axes) or s.get("workload", "-")
        out.setdefault((setting, drafter, k), []).append(m)
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """A row per (setting, drafter, k). A drafter's speed-up is against speculative=none's cell at
    the same k when the sweep ran one (experiment=speculative does: it ran next to it, so under
    about the same load from whatever else runs on the machine), else against the median of
    none's cells in the setting. A none row keeps the k of its place in the sweep."""
    by_cell = cells(runs)
    baselines = {}  # setting -> (none's decode tok/s, its token digests)
    for (setting, drafter, _), ms in by_cell.items():
        if drafter == "none":
            rates, digests = baselines.setdefault(setting, ([], set()))
            rates += [m["decode_throughput"] for m in ms]
            digests |= {m.get("output_tokens_sha256") for m in ms}
    rows = []
    for (setting, drafter, k), ms in by_cell.items():
        decode = statistics.median(m["decode_throughput"] for m in ms)
        rates, digests = baselines.get(setting, ([], set()))
        paired = by_cell.get((setting, "none", k))
        base = (statistics.median(m["decode_throughput"] for m in paired) if paired
                else statistics.median(rates) if rates else None)
        spec = [m["spec_decode"] for m in ms if m.get("spec_decode")]
        drafted = sum(s["num_draft_tokens"] for s in spec)
        drafts = sum(s["num_drafts"] for s in spec)
        accepted = sum(s["num_accepted_tokens"] for s in spec)
        per_pos = [sum(p) / drafts for p in zip(*(s["num_accepted_tokens_per_pos"] for s in spec))] if drafts else []
        rows.append(dict(
            workload=setting, drafter=drafter, k=k, runs=len(ms), decode_tok_s=decode,
            speedup=decode / base if base else None, output_tok_s=statistics.median(m["output_throughput"] for m in ms),
            acceptance=accepted / drafted if drafted else None, mean_length=1 + accepted / drafts if drafts else None,
            per_pos=per_pos, identical=bool(digests) and {m.get("output_tokens_sha256") for m in ms} <= digests
            and len(digests) == 1))
    order = list(dict.fromkeys(setting for setting, _, _ in by_cell))  # settings in sweep order
    return sorted(rows, key=lambda r: (order.index(r["workload"]), r["drafter"] != "none", r["drafter"], r["k"]))


def _f(x, fmt="{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def write_markdown(path: Path, sweep_dirs: list[Path], runs: list[dict], rows: list[dict], plots: list[str]):
    ok = [r for r in runs if r["status"] == "ok"]
    lines = ["# Speculative decoding: " + ", ".join(f"`{d}`" for d in sweep_dirs), "",
             f"{len(runs)} runs ({len(ok)} finished). Decode tok/s: a run's generated tokens over its decode steps' "
             "time (verify steps included; draft steps are inside them), median over the cell's runs; speed-up: "
             "against speculative=none's cell at the same k on the same workload (the sweep ran it beside the "
             "drafters' cells, k outermost), else the median of none's cells; acceptance "
             "(vLLM's): accepted / drafted tokens; mean acceptance length: 1 + accepted / drafts; identical: "
             "every run's tokens equal speculative=none's (sha256 of all of them).",
             f"Device: {ok[0]['metrics']['device']}." if ok else "", "",
             "| setting | speculative | k | runs | decode tok/s | speed-up | output tok/s | acceptance | "
             "mean acceptance length | identical tokens |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['drafter']} | {r['k'] or '—'}{' (baseline)' if r['drafter'] == 'none' else ''} | {r['runs']} | {_f(r['decode_tok_s'], '{:.1f}')} | "
                     f"{_f(r['speedup'])}× | {_f(r['output_tok_s'], '{:.1f}')} | {_f(r['acceptance'])} | "
                     f"{_f(r['mean_length'])} | {'yes' if r['identical'] else 'NO'} |")
    not_ok = [r for r in runs if r["status"] != "ok"]
    if not_ok:
        lines += ["", "Runs that did not finish:", ""] + [f"- `{r['dir']}` {r['status']}: {r['reason']}" for r in not_ok]
    lines += [""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def plot(out_dir: Path, rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    for workload in workloads:
        for drafter in dict.fromkeys(r["drafter"] for r in rows if r["drafter"] != "none"):
            pts = sorted((r["k"], r["speedup"]) for r in rows if (r["workload"], r["drafter"]) == (workload, drafter)
                         and r["speedup"] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{workload}, {drafter}")
    ax.axhline(1, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("num_speculative_tokens (k)")
    ax.set_ylabel("decode tok/s / speculative=none's")
    ax.set_title("speed-up against k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_dir / "speedup_vs_k.png", dpi=110)
    plt.close(fig)
    fig, panels = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for panel, workload in zip(panels[0], workloads):
        for r in rows:
            if r["workload"] == workload and r["per_pos"]:
                panel.plot(range(1, len(r["per_pos"]) + 1), r["per_pos"], marker="o", label=f"{r['drafter']}, k={r['k']}")
        panel.set_xlabel("draft position")
        panel.set_ylabel("accepted / drafts")
        panel.set_ylim(0, 1)
        panel.set_title(f"acceptance per position: {workload}")
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_dir / "acceptance_per_position.png", dpi=110)
    plt.close(fig)
    return ["speedup_vs_k.png", "acceptance_per_position.png"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.spec_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", help="directories sweeps wrote (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, help="where to write speculative.md and the plots (default: the first sweep dir)")
    args = parser.parse_args(argv)
    out = args.out or args.sweep_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for d in args.sweep_dirs for r in load_runs(d)]
    if not runs:
        raise SystemExit(f"no metrics.json under {', '.join(map(str, args.sweep_dirs))}")
    rows = summarise(runs)
    try:
        plots = plot(out, rows)
    except ImportError:
        print("nvllm.tools.spec_report: matplotlib is not installed, so no plots (pip install 'nvllm[report]')",
              file=sys.stderr)
        plots = []
    write_markdown(out / "speculative.md", args.sweep_dirs, runs, rows, plots)
    print((out / "speculative.md").read_text())


if __name__ == "__main__":
    main()
