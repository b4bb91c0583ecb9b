"""`python -m nvllm.tools.report <sweep dir>`: one table row per configuration of a sweep, and a plot
per swept axis; a sweep over `workload.request_rate` also gets the latency-throughput curve.

Reads every run's metrics.json under the sweep directory into a pandas DataFrame, a row per run. A
configuration is a run's overrides without `repeat`; the swept axes are the overrides that differ
between runs. Each row gives the median and min-max over repeats; runs that were skipped or failed
are listed with their reason, never dropped. Writes report.md (with a definition of every column),
report.csv and by_<axis>.png (needs pandas, tabulate and matplotlib: the `report` extra) into the
sweep directory or --out, and load.png when `workload.request_rate` is swept: p99 TTFT, p99 ITL and
goodput against the achieved request rate, a line per configuration, and a table of each
configuration's knee. A sweep over `quantization` with perplexities beside it (`--quality`, by
default the `perplexity-*.json` files nvllm.tools.perplexity wrote into the sweep directory) also
gets speed against quality: a table and frontier.png, output throughput against perplexity, a line
per configuration of the other axes through the formats no other beats on both (the frontier).
Simulated runs (forward=simulated) are marked SIMULATED in every table and
plot, with what simulated them and whether it was calibrated. A sweep where a drafter ran gets
vLLM's acceptance columns; settings that cannot change a run (`speculative.*` under
speculative=none) are not told apart, so such cells fold into one configuration."""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd


@dataclass(frozen=True)
class Column:
    title: str
    # the unit the value is read in; latencies are read in ms, and shown in s only when every value
    # of the column is at least 1000 ms (a column in s never reads 0.0489)
    unit: str
    read: Callable[[dict], float | None]
    # what the column means, written under the table
    definition: str


def _ms(new: str, old: str | None = None):
    """A latency in ms: vLLM's name (`median_ttft_ms`), or a metrics.json written before it had one
    unit per metric (`ttft_s: {"median": seconds}`)."""
    def read(m):
        if new in m:
            return m[new]
        return m[old]["median"] * 1e3 if old and isinstance(m.get(old), dict) else None
    return read


def _spec(key: str):
    """One of vLLM's acceptance figures from metrics.json's `spec_decode` (None where no drafter
    ran); derived from the counters where a metrics.json predates the figure."""
    def read(m):
        spec = m.get("spec_decode")
        if not spec:
            return None
        if key in spec:
            return spec[key]
        accepted, drafts, drafted = spec["num_accepted_tokens"], spec["num_drafts"], spec["num_draft_tokens"]
        if key == "draft_acceptance_rate":
            return accepted / drafted if drafted else None
        return 1 + accepted / drafts if drafts else None
    return read


def _achieved_rate(m):
    """Only for runs whose requests arrived over time: metrics.json leaves it null for an offline
    batch; one written before that (no `startup_s`) had a rate for every run, the time it took to
    queue an offline batch (thousands of req/s): kept only where a rate was configured."""
    if "startup_s" not in m and m.get("request_rate") is None:
        return None
    return m.get("achieved_request_rate")


COLUMNS = {
    "output_throughput": Column(
        "output throughput", "tok/s", lambda m: m.get("output_throughput", m.get("output_tok_s")),
        "generated tokens / the generate loop's wall time (`duration`); loading, compiling and warming up "
        "happen before it and are not counted (`startup_s` in metrics.json)"),
    "median_ttft": Column(
        "TTFT p50", "ms", _ms("median_ttft_ms", "ttft_s"),
        "median over the run's requests of time to first token (first token − arrival; queueing included)"),
    "median_tpot": Column(
        "TPOT p50", "ms", _ms("median_tpot_ms", "tpot_s"),
        "median over requests of more than one token of (last token − first token) / (tokens − 1)"),
    "peak_memory": Column(
        "peak memory", "GiB", lambda m: m["peak_memory_bytes"].get(
            "cuda_max_allocated_bytes", m["peak_memory_bytes"]["host_max_rss_bytes"]) / 2**30,
        "CUDA: the allocator's peak; CPU: the process's peak resident memory (model, KV cache, Python)"),
    "prefix_hit_rate": Column(
        "prefix hit rate", "", lambda m: m["prefix_cache_hit_rate"],
        "fraction of prompt tokens whose K/V was found in the prefix cache"),
    "preemptions": Column("preemptions", "", lambda m: m["preemptions"],
                          "sequences preempted by recompute during the run"),
    "achieved_rate": Column(
        "achieved rate", "req/s", _achieved_rate,
        "open-loop runs only (a request rate or a trace): (requests − 1) / the time from the first arrival to "
        "the last; — for an offline batch, where every request arrives at once"),
    "p99_ttft": Column("TTFT p99", "ms", _ms("p99_ttft_ms"), "99th percentile of time to first token over requests"),
    "p99_itl": Column("ITL p99", "ms", _ms("p99_itl_ms"),
                      "99th percentile of inter-token latency: every gap between two tokens of a request, pooled"),
    "goodput": Column("goodput", "req/s", lambda m: m.get("request_goodput"),
                      "completed requests per second of `duration` that met every SLO given (slo.*); — without SLOs"),
    "request_throughput": Column("completed", "req/s", lambda m: m.get("request_throughput"),
                                 "completed requests / `duration`"),
    "acceptance_rate": Column(
        "draft acceptance rate", "", _spec("draft_acceptance_rate"),
        "speculative decoding (vLLM's `spec_decode_draft_acceptance_rate`): accepted / drafted tokens; — where "
        "nothing was drafted (speculative=none)"),
    "acceptance_length": Column(
        "mean acceptance length", "tokens", _spec("mean_acceptance_length"),
        "speculative decoding (vLLM's): 1 + accepted / drafts, the tokens one verify step gave a sequence that "
        "drafted, the target's own token included"),
}
PLOTTED = ("output_throughput", "median_ttft", "median_tpot")
LOAD_AXIS, LOAD_PLOTTED = "workload.request_rate", ("p99_ttft", "p99_itl", "goodput")
STATS = ("median", "min", "max")
# a setting's cell where the run did not set it, or where it cannot change the run
UNSET = "—"


def inert_settings(settings: dict, m: dict) -> list[str]:
    """The overrides that cannot change this run: `speculative.*` when no drafter runs
    (speculative=none drafts nothing, whatever num_speculative_tokens says)."""
    drafter = settings.get("speculative") or ((m.get("effective_config") or {}).get("speculative") or {}).get("name")
    return [k for k in settings if k.startswith("speculative.")] if drafter == "none" else []


def load_runs(sweep_dir: Path) -> pd.DataFrame:
    """A row per run: its directory, status, reason, repeat, its overrides (`settings`), those of them
    that cannot change it (`inert`) and each COLUMNS value (None where the run did not finish or did
    not measure it)."""
    rows = []
    for path in sorted(sweep_dir.rglob("metrics.json"), key=lambda p: _job_order(p, sweep_dir)):
        m = json.loads(path.read_text())
        overrides = m.get("overrides")
        if overrides is None:  # written before runs recorded their overrides: Hydra's copy
            from omegaconf import OmegaConf

            overrides = list(OmegaConf.load(path.parent / ".hydra" / "overrides.yaml"))
        settings = dict(o.lstrip("+~").split("=", 1) for o in overrides)
        status = m.get("status", "ok")
        values = {name: _read(col.read, m) if status == "ok" else None for name, col in COLUMNS.items()}
        rows.append({"dir": str(path.parent.relative_to(sweep_dir)), "status": status, "reason": m.get("reason", ""),
                     "repeat": settings.pop("repeat", "0"), "settings": settings,
                     "inert": inert_settings(settings, m), "metrics": m,
                     "simulated": simulated_label(m), **values})
    return pd.DataFrame(rows)


def simulated_label(m: dict) -> str | None:
    """"SIMULATED (...)" for a simulated run's metrics, saying what simulated it; None for a measured one."""
    if not m.get("simulated"):
        return None
    from nvllm.metrics import simulation_source

    sim = m.get("simulation") or {}
    return f"SIMULATED{'' if sim.get('calibrated') else ', uncalibrated'} ({simulation_source(sim)})"


def _marked(title: str, table: pd.DataFrame) -> str:
    """The title of a table or plot, saying when its runs' times are simulated."""
    simulated = [label for label in table["simulated"] if _is_sim(label)]
    if not simulated:
        return title
    if len(simulated) == len(table):
        return f"{title} — {simulated[0] if len(set(simulated)) == 1 else 'SIMULATED'}"
    return f"{title} — SIMULATED runs marked [SIM]"


def _sim(label: str, row) -> str:
    """A series' or row's label, with [SIM] when its runs are simulated."""
    return f"{label} [SIM]" if row is not None and _is_sim(row["simulated"]) else label


def _is_sim(label) -> bool:
    """A `simulated` cell holds a label (a simulated run) or None/NaN (a measured one)."""
    return isinstance(label, str) and bool(label)


def _job_order(path: Path, root: Path):
    parts = path.parent.relative_to(root).parts
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts]


def _read(read, m):
    try:
        value = read(m)
    except (KeyError, TypeError):
        return None
    return None if value is None else float(value)


def settings_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's overrides, a column per key: UNSET where the run did not set the key or where it
    cannot change the run, so runs that differ only there are one configuration."""
    kept = [{k: v for k, v in s.items() if k not in inert} for s, inert in zip(runs["settings"], runs["inert"])]
    return pd.DataFrame(kept, index=runs.index, columns=list(dict.fromkeys(k for s in runs["settings"] for k in s))
                        ).fillna(UNSET)


def with_configs(runs: pd.DataFrame) -> tuple[list[str], dict, pd.DataFrame]:
    """(swept axes, overrides common to every run, the runs with a column per axis and `_config`:
    the configuration they belong to)."""
    settings = settings_frame(runs)
    axes = [k for k in settings.columns if settings[k].nunique() > 1]
    fixed = {k: settings[k].iloc[0] for k in settings.columns if k not in axes}
    runs = pd.concat([settings[axes], runs.drop(columns=["settings"])], axis=1)
    runs["_config"] = runs[axes].astype(str).agg("\x00".join, axis=1) if axes else ""
    return axes, fixed, runs


def summarise(runs: pd.DataFrame) -> tuple[list[str], dict, pd.DataFrame]:
    """(swept axes, overrides common to every run, one row per configuration in sweep order with
    `<column>_median/_min/_max` over its ok runs, `status`, `runs_ok`, `runs`, `reason`, `run_dirs`)."""
    axes, fixed, runs = with_configs(runs)
    groups = runs.groupby("_config", sort=False)
    stats = groups[list(COLUMNS)].agg(STATS)
    stats.columns = [f"{name}_{stat}" for name, stat in stats.columns]
    table = pd.concat([
        groups[axes].first() if axes else pd.DataFrame(index=stats.index),
        groups["status"].agg(lambda s: "ok" if set(s) == {"ok"} else "/".join(sorted(set(s)))),
        groups["status"].agg(lambda s: int((s == "ok").sum())).rename("runs_ok"),
        groups.size().rename("runs"),
        stats,
        groups["reason"].agg(lambda s: "; ".join(dict.fromkeys(r for r in s if r))),
        groups["simulated"].agg(lambda s: next((label for label in s if _is_sim(label)), None)),
        groups["dir"].agg(" ".join).rename("run_dirs"),
    ], axis=1).reset_index(drop=True)
    return axes, fixed, table


def _in_seconds(table: pd.DataFrame, name: str) -> bool:
    """Latencies shown in seconds only when every value is thousands of ms: a column where some
    are tens of ms stays in ms, so no cell reads 0.0489."""
    return COLUMNS[name].unit == "ms" and table[f"{name}_min"].min(skipna=True) >= 1000


def _header(table: pd.DataFrame, name: str) -> str:
    col = COLUMNS[name]
    unit = "s" if _in_seconds(table, name) else col.unit
    return f"{col.title} ({unit})" if unit else col.title


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _cell(row, table, name) -> str:
    values = [row[f"{name}_{s}"] for s in STATS]
    if pd.isna(values[0]):
        return "—"
    if _in_seconds(table, name):
        values = [v / 1e3 for v in values]
    med, lo, hi = map(_fmt, values)
    return med if lo == hi else f"{med} [{lo}–{hi}]"


def _columns(table: pd.DataFrame) -> list[str]:
    """The COLUMNS some run measured (a sweep without SLOs has no goodput column)."""
    return [n for n in COLUMNS if table[f"{n}_median"].notna().any()]


def sweep_title(axes: list[str], fixed: dict) -> str:
    """A named experiment by its name; an ad-hoc sweep by what it swept (its directory, named
    after the time it started, says little)."""
    if "experiment" in fixed:
        return fixed["experiment"]
    return " × ".join(axes) if axes else "one configuration"


def write_markdown(path: Path, sweep_dir: Path, runs: pd.DataFrame, axes, fixed, table, plots: list[str],
                   extra: list[str] = ()):
    """report.md; `extra`: sections (markdown lines) put after the knees."""
    counts = ", ".join(f"{int((runs['status'] == s).sum())} {s}" for s in ("ok", "skipped", "failed"))
    title = f"{sweep_title(axes, fixed)} ({sweep_dir.resolve().name})"  # resolved: `.` has no name
    lines = [f"# Sweep report: {_marked(title, table)}", "",
             f"{len(runs)} runs ({counts}) in `{sweep_dir}`; swept: {', '.join(f'`{a}`' for a in axes) or 'nothing'}.",
             f"Set for every run: {', '.join(f'`{k}={v}`' for k, v in fixed.items()) or 'nothing'}.",
             "Cells: median [min–max] over repeats (`repeat=`) of each run's value. Each run's metrics.json (in "
             "`<sweep dir>/<run>/`) holds its effective and requested configuration."]
    inert = sorted({k for keys in runs["inert"] for k in keys})
    if inert:
        lines.append(f"speculative=none drafts nothing, so its runs at every {', '.join(f'`{k}`' for k in inert)} "
                     f"are one configuration (shown as {UNSET}): they count as its repeats.")
    ok = runs[runs["status"] == "ok"]
    if len(ok):
        m = ok.iloc[0]["metrics"]
        lines.append(f"Device: {m['device']}; torch {m['versions'].get('torch')}, nvllm {m['versions'].get('nvllm')}."
                     + (" SIMULATED: these runs timed a cost model, not the hardware."
                        if any(r.get("simulated") for r in ok["metrics"]) else ""))
    names = _columns(table)
    sims = [_is_sim(label) for label in table["simulated"]]
    mixed = any(sims) and not all(sims)
    shown = pd.DataFrame({**{f"`{a}`": [("[SIM] " if mixed and i == 0 and _is_sim(row["simulated"]) else "") + str(row[a])
                                        for _, row in table.iterrows()] for i, a in enumerate(axes)},
                          **({"times": [f"**{row['simulated']}**" if _is_sim(row["simulated"]) else "measured"
                                        for _, row in table.iterrows()]} if any(sims) else {}),
                          "runs": table["runs_ok"].astype(str) + "/" + table["runs"].astype(str),
                          **{_header(table, n): [_cell(row, table, n) if row["runs_ok"] else "" for _, row in table.iterrows()]
                             for n in names}})
    for i, row in table.iterrows():
        if not row["runs_ok"] and names:
            shown.loc[i, _header(table, names[0])] = f"**{row['status']}**"
    lines += ["", shown.to_markdown(index=False, disable_numparse=True)]
    lines += ["", "Columns:", ""] + [f"- **{_header(table, n)}**: {COLUMNS[n].definition}." for n in names]
    lines += _by_priority(axes, runs, table)
    lines += _knees(axes, table)
    lines += extra
    not_ok = runs[runs["status"] != "ok"]
    if len(not_ok):
        listed = pd.DataFrame({
            "run": [f"`{d}`" for d in not_ok["dir"]], "status": not_ok["status"],
            "configuration": [f"`{' '.join(f'{a}={r[a]}' for a in axes)} repeat={r['repeat']}`".replace("` ", "`")
                              for _, r in not_ok.iterrows()],
            "reason": [r.replace("|", "/") for r in not_ok["reason"]]})
        lines += ["", "## Runs that did not finish", "", listed.to_markdown(index=False, disable_numparse=True)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def _by_priority(axes: list[str], runs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """TTFT per request priority, for workloads that assign priorities (workload.priorities)."""
    records = []
    for _, r in runs.iterrows():
        m = r["metrics"]
        by_priority = m.get("ttft_ms_by_priority") or {  # or as written before metrics.json had one unit
            p: {"median_ttft_ms": v["median"] * 1e3} for p, v in (m.get("ttft_s_by_priority") or {}).items()}
        records += [{"_config": r["_config"], "priority": int(p), "ttft": v["median_ttft_ms"]}
                    for p, v in by_priority.items()]
    if not records:
        return []
    data = pd.DataFrame(records)
    seconds = data["ttft"].min() >= 1000  # as _in_seconds
    stats = data.groupby(["_config", "priority"], sort=False)["ttft"].agg(STATS) / (1e3 if seconds else 1)
    keys = runs.drop_duplicates("_config")
    shown = pd.DataFrame({f"`{a}`": list(keys[a]) for a in axes})
    for p in sorted(data["priority"].unique()):
        cells = []
        for config in keys["_config"]:
            med, lo, hi = (_fmt(v) for v in stats.loc[(config, p)]) if (config, p) in stats.index else ("—",) * 3
            cells.append(med if lo == hi else f"{med} [{lo}–{hi}]")
        shown[f"priority {p}"] = cells
    return ["", f"## TTFT p50 ({'s' if seconds else 'ms'}) by request priority (smaller is more urgent)", "",
            shown.to_markdown(index=False, disable_numparse=True)]


KNEE_FRACTION = 0.9


def _knees(axes: list[str], table: pd.DataFrame) -> list[str]:
    """For a sweep over the request rate: per configuration, the knee — the highest rate whose goodput
    (completed req/s where no SLO is set) is at least KNEE_FRACTION of the achieved arrival rate."""
    if LOAD_AXIS not in axes:
        return []
    others = [a for a in axes if a != LOAD_AXIS]
    lines = ["", f"## {_marked('The knee of each configuration', table)}", "",
             f"The highest `{LOAD_AXIS}` whose goodput (completed req/s where no SLO is set) kept up with at least "
             f"{KNEE_FRACTION:.0%} of the achieved arrival rate, and the first rate that did not.", "",
             "| " + " | ".join([*(f"`{a}`" for a in others), "knee (req/s)", "goodput there (req/s)",
                              "TTFT p99 there (ms)", "first rate past it", "goodput there (req/s)"]) + " |",
             "|" + "---|" * (len(others) + 5)]

    def served(row):
        done = row["goodput_median"] if pd.notna(row["goodput_median"]) else row["request_throughput_median"]
        return pd.notna(done) and done >= KNEE_FRACTION * row["achieved_rate_median"]

    def value(row, name):
        return _fmt(row[f"{name}_median"]) if row is not None and pd.notna(row[f"{name}_median"]) else "—"

    for label, group in (table.groupby(others, sort=False) if others else [((), table)]):
        label = label if isinstance(label, tuple) else (label,)
        points = group[group["achieved_rate_median"].notna()]
        points = points.iloc[points[LOAD_AXIS].astype(float).argsort()]
        knee = past = None
        for _, p in points.iterrows():
            if served(p):
                knee = p
            else:
                past = p
                break
        cells = [("[SIM] " if len(points) and _is_sim(points.iloc[0]["simulated"]) and i == 0 else "") + str(v)
                 for i, v in enumerate(label)]
        lines.append("| " + " | ".join([*cells, knee[LOAD_AXIS] if knee is not None else
                                        f"below {points.iloc[0][LOAD_AXIS] if len(points) else '—'}",
                                        value(knee, "goodput"), value(knee, "p99_ttft"),
                                        past[LOAD_AXIS] if past is not None else "none swept",
                                        value(past, "goodput")]) + " |")
    return lines


def _is_number(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def _numeric_x(panel, xs: list[float]):
    """A numeric x axis at the values themselves: logarithmic when they span 8x or more (0.5, 2, 8
    evenly apart, as their ratios are), ticks labelled with the values as written."""
    from matplotlib.ticker import FixedLocator, NullLocator

    if min(xs) > 0 and max(xs) / min(xs) >= 8:
        panel.set_xscale("log")
    panel.xaxis.set_major_locator(FixedLocator(xs))
    panel.xaxis.set_minor_locator(NullLocator())
    panel.set_xticklabels([f"{x:g}" for x in xs])


def _from_zero(panel, margin: float):
    """A linear y axis from 0 to `margin` above the highest point drawn (error bars included), so
    no marker or bar ends on the frame."""
    high = panel.dataLim.y1 if panel.dataLim.height >= 0 and panel.has_data() else 0
    panel.set_ylim(0, high * (1 + margin) if high > 0 else 1)


def _plain_log_y(panel):
    """A log y axis labelled 200, 500, 1000 instead of 2×10², 5×10²; over more than three decades
    only the powers of ten, so the labels do not crowd. Call it once the data are drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = panel.get_ylim()
    panel.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if high / low < 1e3 else (1,)))
    panel.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 1 else f"{v:g}"))
    panel.yaxis.set_minor_formatter(NullFormatter())


def plot(out_dir: Path, title: str, axes: list[str], table: pd.DataFrame) -> list[str]:
    """One PNG per swept axis: the plotted metrics against that axis, a series per combination of
    the other axes; markers at the median, bars from min to max. A numeric axis is drawn to scale
    (log when it spans 8x); a categorical one as evenly spaced names. A configuration that does not
    use the axis (UNSET there: speculative=none by k) is a dashed level line across the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis in axes:
        xs = [x for x in dict.fromkeys(table[axis]) if x != UNSET]
        numeric = all(_is_number(x) for x in xs)
        position = {x: float(x) if numeric else i for i, x in enumerate(xs)}
        others = [a for a in axes if a != axis]
        series: dict[str, pd.DataFrame] = {}
        for label, rows in (table.groupby(others, sort=False) if others else [((), table)]):
            label = label if isinstance(label, tuple) else (label,)
            name = ", ".join(f"{a}={v}" for a, v in zip(others, label) if v != UNSET) or axis
            missing = [f"{r[axis]}: {r['status']}" for _, r in rows.iterrows() if not r["runs_ok"]]
            name = _sim(name, rows.iloc[0])
            series[f"{name} ({', '.join(missing)})" if missing else name] = rows
        fig, panels = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4), squeeze=False, layout="constrained")
        for panel, name in zip(panels[0], PLOTTED):
            scale = 1e-3 if _in_seconds(table, name) else 1
            for k, (label, rows) in enumerate(series.items()):
                rows = rows[rows[f"{name}_median"].notna()]
                if rows.empty:
                    continue
                if (rows[axis] == UNSET).all():
                    # x in axes coordinates: the whole width, whatever the axis' scale
                    panel.plot([0, 1], [rows[f"{name}_median"].median() * scale] * 2, linestyle="--",
                               transform=panel.get_yaxis_transform(), label=f"{label} (any {axis})")
                    continue
                rows = rows[rows[axis] != UNSET]
                shift = 0 if numeric else (k - (len(series) - 1) / 2) * 0.3 / max(1, len(series) - 1)
                x = [position[v] + shift for v in rows[axis]]
                med = rows[f"{name}_median"] * scale
                err = [med - rows[f"{name}_min"] * scale, rows[f"{name}_max"] * scale - med]
                panel.errorbar(x, med, yerr=err, marker="o", capsize=3, label=label, clip_on=False,
                               linestyle="-" if numeric else "none")
            if numeric:
                _numeric_x(panel, [float(x) for x in xs])
            else:
                panel.set_xticks(range(len(xs)), xs)
                panel.set_xlim(-0.5, len(xs) - 0.5)
            panel.set_xlabel(axis)
            panel.set_ylabel(_header(table, name))
            _from_zero(panel, 0.12)
            panel.grid(alpha=0.3)
        fig.suptitle(f"{_marked(title, table)}: median, bars min–max over repeats, by {axis}")
        _legend(fig, panels[0][0], len(series) > 1 or any("(" in s for s in series))
        name = f"by_{axis}.png"
        fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    return written


def _legend(fig, panel, show: bool, extra: list | None = None):
    """The first panel's series (and `extra` handles) as one legend under the panels. The figure's
    constrained layout makes room for it below the x labels, however many rows it takes."""
    handles, labels = panel.get_legend_handles_labels()
    for handle, label in extra or ():
        handles.append(handle)
        labels.append(label)
    if show and handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize="small",
                   frameon=False)


def plot_load(out_dir: Path, title: str, axes: list[str], table: pd.DataFrame, slo: str) -> list[str]:
    """The latency-throughput curve: LOAD_PLOTTED against the achieved request rate (medians over
    repeats), a line per combination of the other axes, points in order of the configured rate."""
    if LOAD_AXIS not in axes:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    others = [a for a in axes if a != LOAD_AXIS]
    rows = table[table["achieved_rate_median"].notna()]
    series = list(rows.groupby(others, sort=False)) if others else [((), rows)]
    fig, panels = plt.subplots(1, len(LOAD_PLOTTED), figsize=(5 * len(LOAD_PLOTTED), 4.2), squeeze=False,
                               layout="constrained")
    top = rows["achieved_rate_median"].max() if len(rows) else 1
    for panel, name in zip(panels[0], LOAD_PLOTTED):
        scale = 1e-3 if _in_seconds(table, name) else 1
        for i, (label, group) in enumerate(series):
            label = label if isinstance(label, tuple) else (label,)
            text = _sim(", ".join(f"{a}={v}" for a, v in zip(others, label) if v != UNSET) or "runs",
                        group.iloc[0] if len(group) else None)
            group = group.sort_values("achieved_rate_median")
            pts = group[group[f"{name}_median"].notna()]
            # an empty line drawn unclipped would stretch the panel's extent to the figure's corner,
            # and the layout would find no room for the panels (goodput is empty without SLOs)
            if len(pts):
                panel.plot(pts["achieved_rate_median"], pts[f"{name}_median"] * scale, marker="o", label=text,
                           color=f"C{i}", clip_on=False)
            done = group[group["request_throughput_median"].notna()]
            if name == "goodput" and len(done):  # what was served at all, whatever its latency
                panel.plot(done["achieved_rate_median"], done["request_throughput_median"], linestyle="--", marker=".",
                           color=f"C{i}", clip_on=False)
        if name == "goodput":
            panel.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
            _from_zero(panel, 0.1)
            panel.set_ylabel("requests per second (req/s)")
            panel.set_title("goodput and completed requests" + (f"\n{slo}" if slo else ""), fontsize="medium")
        else:
            panel.set_yscale("log")
            panel.margins(y=0.1)
            _plain_log_y(panel)
            panel.set_ylabel(_header(table, name))
        panel.set_xlabel("achieved request rate (req/s)")
        panel.grid(alpha=0.3, which="both")
    fig.suptitle(f"{_marked(title, table)}: latency and goodput against load (medians over repeats)")
    styles = [(Line2D([], [], color="black"), "goodput (meets the SLOs)"),
              (Line2D([], [], color="black", linestyle="--"), "completed (any latency)"),
              (Line2D([], [], color="grey", linestyle=":"), "ideal: every arrival served (y = x)")]
    _legend(fig, panels[0][0], True, styles)
    fig.savefig(out_dir / "load.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ["load.png"]


def _slo(runs: pd.DataFrame) -> str:
    """The SLOs the runs' goodput counts, as text."""
    for m in runs["metrics"]:
        slo = (m.get("requested_config") or {}).get("slo") or {}
        given = [f"{k.removesuffix('_ms').upper()} <= {v:g} ms" for k, v in slo.items() if v is not None]
        if given:
            return "SLO: " + ", ".join(given)
    return ""


# -- speed against quality --------------------------------------------------------------------------
QUALITY_AXIS = "quantization"
# what names a format: its layout (quantization) and what its weights multiply (quantization.activations)
FORMAT_AXES = (QUALITY_AXIS, "quantization.activations")


def format_name(quantization: str, activations: str | None = None) -> str:
    """A format as the report names it: `int8`, or `int8, activations=int8`."""
    return quantization if activations in (None, "float") else f"{quantization}, activations={activations}"




def load_quality(files: list[Path]) -> dict[str, dict]:
    """What nvllm.tools.perplexity measured (its --json files), by the format of the run it scored
    (format_name): perplexity, the float32 model's, mean KL divergence and top-1 agreement against it."""
    quality = {}
    for file in files:
        data = json.loads(Path(file).read_text())
        run, reference = data["run"], data["float32"]
        # (files written before perplexity.py recorded `activations` have it in their overrides only)
        activations = run.get("activations") or next(
            (o.split("=", 1)[1] for o in run.get("overrides", []) if o.startswith(f"{FORMAT_AXES[1]}=")), "float")
        name = format_name(run["quantization"], activations)
        if name in quality:
            raise SystemExit(f"{file} and {quality[name]['file']} both measured {name}; keep one")
        quality[name] = {
            "perplexity": run["perplexity"], "float32_perplexity": reference["perplexity"],
            "mean_kl_divergence": run.get("mean_kl_divergence"), "top1_agreement": run.get("top1_agreement"),
            "weight_bytes": run.get("weight_bytes"), "text": data.get("text"), "file": str(file)}
    return quality


def frontier_table(axes: list[str], table: pd.DataFrame, quality: dict[str, dict], fixed: dict) -> pd.DataFrame:
    """The configurations whose format was measured for quality, with its perplexity, and
    `frontier`: whether no other format at the same settings of the other axes is both faster
    (output throughput) and at most as perplexed."""
    activations = table[FORMAT_AXES[1]] if FORMAT_AXES[1] in axes else [fixed.get(FORMAT_AXES[1])] * len(table)
    table = table.assign(format=[format_name(q, a) for q, a in zip(table[QUALITY_AXIS], activations)])
    rows = table[table["format"].isin(list(quality)) & table["output_throughput_median"].notna()].copy()
    rows["perplexity"] = [quality[q]["perplexity"] for q in rows["format"]]
    others = [a for a in axes if a not in FORMAT_AXES]
    rows["frontier"] = False
    for _, group in (rows.groupby(others, sort=False) if others else [((), rows)]):
        for i, row in group.iterrows():
            rows.loc[i, "frontier"] = not any(
                o["output_throughput_median"] > row["output_throughput_median"] and o["perplexity"] <= row["perplexity"]
                for _, o in group.iterrows())
    return rows


def quality_markdown(axes: list[str], rows: pd.DataFrame, quality: dict[str, dict]) -> list[str]:
    others = [a for a in axes if a not in FORMAT_AXES]
    reference = next(iter(quality.values()))
    files = ", ".join(f"`{Path(q['file']).name}`" for q in quality.values())
    shown = pd.DataFrame({
        **{f"`{a}`": list(rows[a]) for a in [*(a for a in FORMAT_AXES if a in axes), *others]},
        "perplexity": [f"{p:.4f}" for p in rows["perplexity"]],
        "vs float32": [f"{100 * (quality[q]['perplexity'] / quality[q]['float32_perplexity'] - 1):+.2f} %"
                       for q in rows["format"]],
        "mean KL divergence": [_fmt_small(quality[q]["mean_kl_divergence"]) for q in rows["format"]],
        "top-1 agreement": ["—" if quality[q]["top1_agreement"] is None else f"{100 * quality[q]['top1_agreement']:.2f} %"
                            for q in rows["format"]],
        "weights (MiB)": ["—" if not quality[q]["weight_bytes"] else f"{quality[q]['weight_bytes'] / 2**20:.1f}"
                          for q in rows["format"]],
        _header(rows, "output_throughput"): [_cell(r, rows, "output_throughput") for _, r in rows.iterrows()],
        "on the frontier": ["yes" if f else "" for f in rows["frontier"]]})
    return ["", f"## {_marked('Speed against quality', rows)}", "",
            f"Perplexity of each format on `{reference['text']}` against the float32 model's "
            f"({reference['float32_perplexity']:.4f}), from `python -m nvllm.tools.perplexity` (its JSON files: "
            f"{files}); output throughput from this sweep. "
            f"On the frontier: no other format" + (f" at the same {', '.join(f'`{a}`' for a in others)}" if others else "")
            + " is faster at a perplexity no higher.", "", shown.to_markdown(index=False, disable_numparse=True)]


def _fmt_small(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def plot_frontier(out_dir: Path, title: str, axes: list[str], rows: pd.DataFrame) -> list[str]:
    """frontier.png: output throughput against perplexity, a point per format (labelled) and a line per
    configuration of the other axes through its frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a for a in axes if a not in FORMAT_AXES]
    fig, panel = plt.subplots(figsize=(7, 4.5), layout="constrained")
    groups = rows.groupby(others, sort=False) if others else [((), rows)]
    for i, (label, group) in enumerate(groups):
        label = label if isinstance(label, tuple) else (label,)
        name = ", ".join(f"{a}={v}" for a, v in zip(others, label)) or "runs"
        panel.scatter(group["perplexity"], group["output_throughput_median"], color=f"C{i}", zorder=3)
        front = group[group["frontier"]].sort_values("perplexity")
        # the frontier: a line through its points, each ringed (a frontier of one point is a ring)
        panel.plot(front["perplexity"], front["output_throughput_median"], color=f"C{i}", marker="o", markersize=11,
                   markerfacecolor="none", label=_sim(name, group.iloc[0]))
        for _, r in group.iterrows():
            panel.annotate(r["format"], (r["perplexity"], r["output_throughput_median"]), fontsize="small",
                           xytext=(4, 4), textcoords="offset points")
    panel.set_xlabel("perplexity (lower is better)")
    panel.set_ylabel(_header(rows, "output_throughput"))
    panel.set_yscale("log")
    _plain_log_y(panel)
    panel.grid(alpha=0.3, which="both")
    fig.suptitle(f"{_marked(title, rows)}: speed against quality (ringed and joined: the frontier)")
    _legend(fig, panel, len(others) > 0)
    fig.savefig(out_dir / "frontier.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ["frontier.png"]


def report(sweep_dir: Path, out_dir: Path | None = None, quality_files: list[Path] | None = None) -> Path:
    out_dir = out_dir or sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(sweep_dir)
    if runs.empty:
        raise SystemExit(f"no metrics.json under {sweep_dir}: is it the directory a sweep (-m) wrote?")
    axes, fixed, table = summarise(runs)
    _, _, runs = with_configs(runs)
    quality = load_quality(sorted(sweep_dir.glob("perplexity-*.json")) if quality_files is None else quality_files)
    frontier = frontier_table(axes, table, quality, fixed) if quality and QUALITY_AXIS in axes else None
    try:
        title = sweep_title(axes, fixed)
        plots = plot(out_dir, title, axes, table) + plot_load(out_dir, title, axes, table, _slo(runs))
        if frontier is not None and len(frontier):
            plots += plot_frontier(out_dir, title, axes, frontier)
    except ImportError:
        print("nvllm.tools.report: matplotlib is not installed, so no plots (pip install 'nvllm[report]')", file=sys.stderr)
        plots = []
    table.to_csv(out_dir / "report.csv", index=False)
    extra = quality_markdown(axes, frontier, quality) if frontier is not None and len(frontier) else []
    write_markdown(out_dir / "report.md", sweep_dir, runs, axes, fixed, table, plots, extra)
    return out_dir / "report.md"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nvllm.tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the directory a sweep wrote (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, help="where to write report.md, report.csv and the plots (default: sweep_dir)")
    parser.add_argument("--quality", type=Path, nargs="+", metavar="JSON",
                        help="perplexities of the swept formats (python -m nvllm.tools.perplexity --json); default: "
                             "sweep_dir/perplexity-*.json")
    args = parser.parse_args(argv)
    path = report(args.sweep_dir, args.out, args.quality)
    print(path.read_text())
    print(f"report: {path}")


if __name__ == "__main__":
    main()
