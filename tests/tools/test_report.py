"""nvllm.tools.report on made-up runs (no model): the acceptance columns of a sweep where a drafter
ran, speculative=none's cells folded into one, an ad-hoc sweep titled by its axes, latency units that
keep the digits, and plots whose legend stays clear of the axis labels."""
import csv
import json
import warnings

import pytest

from nvllm.metrics import RequestTiming, serving_metrics
from nvllm.tools.report import report

K = "speculative.num_speculative_tokens"


def write_run(sweep, n: int, overrides: list[str], **metrics):
    m = {"status": "ok", "overrides": overrides, "device": "cpu: test", "versions": {}, "output_throughput": 10.0,
         "median_ttft_ms": 50.0, "median_tpot_ms": 20.0, "spec_decode": None, **metrics}
    (sweep / str(n)).mkdir(parents=True)
    (sweep / str(n) / "metrics.json").write_text(json.dumps(m))


def spec(drafts: int, drafted: int, accepted: int) -> dict:
    """metrics.json's spec_decode as the engine writes it."""
    return {"num_drafts": drafts, "num_draft_tokens": drafted, "num_accepted_tokens": accepted,
            "draft_acceptance_rate": accepted / drafted, "mean_acceptance_length": 1 + accepted / drafts}


@pytest.fixture
def spec_sweep(tmp_path):
    """`-m speculative=none,ngram speculative.num_speculative_tokens=2,4,8`, as Hydra lays it out."""
    sweep = tmp_path / "2026-12-06" / "12-10-57"
    n = 0
    for k in (2, 4, 8):
        for drafter in ("none", "ngram"):
            write_run(sweep, n, [f"speculative={drafter}", f"{K}={k}"], output_throughput=10.0 + n,
                      effective_config={"speculative": {"name": drafter, "num_speculative_tokens": k}},
                      spec_decode=spec(10, 10 * k, 5 * k) if drafter == "ngram" else None)
            n += 1
    return sweep


def test_a_drafters_sweep_has_the_acceptance_columns_and_one_baseline(spec_sweep, tmp_path):
    md = report(spec_sweep, tmp_path).read_text()
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    # none at k=2, 4, 8 is one configuration, its three runs as repeats: 1 + 3 rows, not 6
    assert [(r["speculative"], r[K], r["runs"]) for r in rows] == [
        ("none", "—", "3"), ("ngram", "2", "1"), ("ngram", "4", "1"), ("ngram", "8", "1")]
    assert float(rows[0]["output_throughput_min"]) == 10 and float(rows[0]["output_throughput_max"]) == 14
    assert [float(r["acceptance_rate_median"]) for r in rows[1:]] == pytest.approx([0.5] * 3)
    assert [float(r["acceptance_length_median"]) for r in rows[1:]] == pytest.approx([2, 3, 5])
    assert rows[0]["acceptance_rate_median"] == ""
    assert "draft acceptance rate" in md and "mean acceptance length (tokens)" in md
    assert f"at every `{K}` are one configuration" in md


def test_no_acceptance_columns_without_a_drafter(tmp_path):
    for n, scheduler in enumerate(("fcfs", "chunked")):
        write_run(tmp_path / "sweep", n, [f"scheduler={scheduler}"])
    md = report(tmp_path / "sweep").read_text()
    assert "acceptance rate" not in md and "acceptance length" not in md and "are one configuration" not in md


def test_an_ad_hoc_sweep_is_titled_by_its_axes(spec_sweep, tmp_path):
    md = report(spec_sweep, tmp_path).read_text()
    assert md.splitlines()[0] == f"# Sweep report: speculative × {K} (12-10-57)"
    write_run(tmp_path / "named", 0, ["scheduler=fcfs", "experiment=schedulers"])
    write_run(tmp_path / "named", 1, ["scheduler=chunked", "experiment=schedulers"])
    assert report(tmp_path / "named").read_text().startswith("# Sweep report: schedulers (named)\n")


def test_a_latency_column_stays_in_ms_unless_every_value_is_seconds(tmp_path):
    for n, (scheduler, ttft) in enumerate((("fcfs", 48.9), ("chunked", 2500.0))):
        write_run(tmp_path / "mixed", n, [f"scheduler={scheduler}"], median_ttft_ms=ttft)
    md = report(tmp_path / "mixed").read_text()
    assert "TTFT p50 (ms)" in md and "48.9" in md and "2500" in md and "0.0489" not in md
    for n, (scheduler, ttft) in enumerate((("fcfs", 1500.0), ("chunked", 2500.0))):
        write_run(tmp_path / "slow", n, [f"scheduler={scheduler}"], median_ttft_ms=ttft)
    md = report(tmp_path / "slow").read_text()
    assert "TTFT p50 (s)" in md and "| 1.5 " in md


def test_plots_of_two_configurations_lay_out_without_warnings(tmp_path, spec_sweep):
    """The legend goes under the panels without covering the x labels: matplotlib warns ("Tight
    layout not applied", "constrained_layout not applied") when it cannot make room. Without SLOs
    the goodput panel has no goodput line, which once pushed the layout out of the figure."""
    pytest.importorskip("matplotlib")
    sim = {"cost_model": "profile", "calibrated": True, "profile": "cpu.json", "hardware": "cpu"}
    for n, (forward, rate) in enumerate((f, r) for f in ("auto", "simulated") for r in (1, 2)):
        timings = [RequestTiming(i / rate, [i / rate + 0.2, i / rate + 0.5], 8, 2) for i in range(6)]
        write_run(tmp_path / "load", n, [f"forward={forward}", f"workload.request_rate={rate}"],
                  simulated=forward == "simulated", **({"simulation": sim} if forward == "simulated" else {}),
                  **serving_metrics(timings, duration=6 / rate + 1, request_rate=rate))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = report(tmp_path / "load").read_text()
        assert "(load.png)" in md and "(by_forward.png)" in md
        report(spec_sweep, tmp_path / "spec")
    assert (tmp_path / "spec" / f"by_{K}.png").stat().st_size > 1000


def write_perplexity(path, quantization: str, perplexity: float, **run):
    """A JSON as python -m nvllm.tools.perplexity --json writes it."""
    run = {"quantization": quantization, "dtype": "float32", "perplexity": perplexity, "weight_bytes": 2**20,
           "mean_kl_divergence": 0.01, "top1_agreement": 0.9, **run}
    path.write_text(json.dumps({"text": "alice.txt", "ctx": 512, "float32": {"perplexity": 20.0}, "run": run}))


def test_a_formats_sweep_gets_speed_against_quality(tmp_path):
    """quantization x workload.num_seqs with the formats' perplexities beside it: the table says which
    formats are on the frontier at each batch size (none faster at a perplexity no higher), and
    frontier.png draws it."""
    sweep = tmp_path / "quantization"
    speed = {("none", 1): 10.0, ("int8", 1): 12.0, ("int4", 1): 11.0, ("none", 8): 50.0, ("int8", 8): 40.0,
             ("int4", 8): 60.0}
    for n, ((q, seqs), tok_s) in enumerate(speed.items()):
        write_run(sweep, n, [f"quantization={q}", f"workload.num_seqs={seqs}"], output_throughput=tok_s)
    for q, ppl in (("none", 20.0), ("int8", 20.1), ("int4", 21.0)):
        write_perplexity(sweep / f"perplexity-{q}.json", q, ppl)
    md = report(sweep).read_text()
    section = md.split("## Speed against quality")[1]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "`" not in line.split("|")[1]]
    front = {(r[0].strip(), r[1].strip()): r[-1].strip() == "yes" for r in rows}
    # none has the lowest perplexity; at 1 sequence int8 is faster than int4 at a lower perplexity; at 8
    # none is faster than int8, and int4 the fastest
    assert front == {("none", "1"): True, ("int8", "1"): True, ("int4", "1"): False,
                     ("none", "8"): True, ("int8", "8"): False, ("int4", "8"): True}
    assert "+0.50 %" in section and "perplexity-int8.json" in section
    pytest.importorskip("matplotlib")
    assert (sweep / "frontier.png").stat().st_size > 1000 and "(frontier.png)" in md
    with pytest.raises(SystemExit, match="both measured int8; keep one"):
        report(sweep, quality_files=[sweep / "perplexity-int8.json", sweep / "perplexity-int8.json"])


def test_int8_activations_are_a_format_of_their_own(tmp_path):
    """quantization x quantization.activations x workload.num_seqs: each (layout, activations) pair is
    a format with its own perplexity; none with int8 activations was refused (skipped), so it is no
    point; a perplexity file that names its activations only in its overrides (written before the
    field) still matches."""
    sweep, n = tmp_path / "quantization", 0
    speed = {("none", "float"): 10.0, ("int8", "float"): 12.0, ("int8", "int8"): 15.0}
    for seqs in (1, 8):
        for (q, act), tok_s in [*speed.items(), (("none", "int8"), None)]:
            overrides = [f"quantization={q}", f"quantization.activations={act}", f"workload.num_seqs={seqs}"]
            if tok_s is None:
                (sweep / str(n)).mkdir(parents=True)
                (sweep / str(n) / "metrics.json").write_text(json.dumps(
                    {"status": "skipped", "reason": "refused", "overrides": overrides, "device": "cpu: test",
                     "versions": {}}))
            else:
                write_run(sweep, n, overrides, output_throughput=tok_s * seqs)
            n += 1
    write_perplexity(sweep / "perplexity-none.json", "none", 20.0, activations="float")
    write_perplexity(sweep / "perplexity-int8.json", "int8", 20.1, activations="float")
    write_perplexity(sweep / "perplexity-int8-a8.json", "int8", 20.2,
                     overrides=["quantization=int8", "quantization.activations=int8"])
    md = report(sweep).read_text()
    section = md.split("## Speed against quality")[1]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in ("none", "int8")]
    assert {(r[0], r[1], r[2]): (r[3], r[-1] == "yes") for r in rows} == {
        (q, act, str(seqs)): (ppl, True) for seqs in (1, 8)
        for q, act, ppl in (("none", "float", "20.0000"), ("int8", "float", "20.1000"), ("int8", "int8", "20.2000"))}
