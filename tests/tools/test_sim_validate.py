"""Simulated runs against measured ones (nvllm.tools.sim_validate) and the SIMULATED marks in the
sweep report: made-up runs first (exact errors, no model), then a whole profile -> sweep ->
simulated sweep -> validation on a tiny model (slow)."""
import csv
import json
import re
import subprocess
import sys

import pytest

from nvllm.metrics import RequestTiming, serving_metrics
from nvllm.tools.report import report
from nvllm.tools.sim_validate import main, pairs

SIM = {"cost_model": "profile", "calibrated": True, "profile": "cpu.json", "hardware": "cpu"}


def write_run(directory, overrides, scale, simulated, rate=1.0):
    """A run of 6 requests whose times are `scale` times a fixed pattern."""
    timings = [RequestTiming(i / rate, [i / rate + 0.2 * scale, i / rate + 0.5 * scale], 8, 2) for i in range(6)]
    m = {"status": "ok", "overrides": overrides, "device": "cpu", "versions": {}, "requested_config": {},
         "simulated": simulated, **({"simulation": SIM} if simulated else {}),
         **serving_metrics(timings, duration=6 / rate + scale, request_rate=rate)}
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(m))
    return m


def test_pairs_errors_and_record(tmp_path):
    for n, rate in enumerate((1, 2)):
        write_run(tmp_path / "measured" / str(n), [f"workload.request_rate={rate}"], 1.0, False, rate)
        write_run(tmp_path / "simulated" / str(n), [f"workload.request_rate={rate}", "forward=simulated",
                                                    "forward.profile=cpu.json"], 1.25, True, rate)
    matched = pairs(tmp_path / "measured", tmp_path / "simulated")
    assert len(matched) == 2
    for p in matched:
        assert p["errors"]["median_ttft_ms"] == pytest.approx(0.25) and p["errors"]["median_itl_ms"] == pytest.approx(0.25)
    profile = tmp_path / "cpu.json"
    profile.write_text(json.dumps({"nvllm_profile": 1, "validation": None}))
    main([str(tmp_path / "measured"), str(tmp_path / "simulated"), "--out", str(tmp_path / "out"), "--record", str(profile)])
    md = (tmp_path / "out" / "validation.md").read_text()
    assert md.startswith("# SIMULATED against MEASURED") and "| TTFT p50 (ms) | 25.0% [25%] |" in md
    rows = list(csv.DictReader((tmp_path / "out" / "validation.csv").open()))
    assert [float(r["median_ttft_ms_error"]) for r in rows] == pytest.approx([0.25, 0.25])
    recorded = json.loads(profile.read_text())["validation"]
    assert recorded["all"]["median_ttft_ms"]["median_abs_error"] == pytest.approx(0.25)
    assert recorded["all"]["pairs"] == 2
    with pytest.raises(SystemExit, match="must hold measured runs"):
        pairs(tmp_path / "simulated", tmp_path / "simulated")
    # two measurements of one sweep: the noise floor
    for n, rate in enumerate((1, 2)):
        write_run(tmp_path / "again" / str(n), [f"workload.request_rate={rate}"], 1.1, False, rate)
    main([str(tmp_path / "measured"), str(tmp_path / "again"), "--out", str(tmp_path / "noise"), "--repeat"])
    md = (tmp_path / "noise" / "validation.md").read_text()
    assert md.startswith("# MEASURED again against MEASURED") and "| TTFT p50 (ms) | 10.0% [10%] |" in md


def test_report_marks_simulated_runs(tmp_path):
    for n, (forward, rate) in enumerate([(f, r) for f in ("auto", "simulated") for r in (1, 2)]):
        write_run(tmp_path / str(n), [f"forward={forward}", f"workload.request_rate={rate}"], 1.0, forward == "simulated", rate)
    md = report(tmp_path).read_text()
    assert "— SIMULATED runs marked [SIM]" in md and re.search(r"\| times +\|", md)
    assert md.count("**SIMULATED (profile cpu.json, cpu)**") == 2 and len(re.findall(r"\| measured +\|", md)) == 2
    assert "The knee of each configuration" in md
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["simulated"] for r in rows] == ["", "", "SIMULATED (profile cpu.json, cpu)", "SIMULATED (profile cpu.json, cpu)"]


@pytest.mark.slow
def test_profile_sweep_simulate_validate(tmp_path, tiny_llama_path):
    """The validation as docs/simulation.md gives it, on a tiny model: profile, the sweep measured and
    simulated, the comparison recorded in the profile, and a later run carrying the measured error."""
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    common = ["model=llama", f"model.path={tiny_llama_path}", "max_model_len=64", "max_num_seqs=8",
              "max_num_batched_tokens=128", "kv_cache.block_size=8"]
    run("nvllm.tools.profile", *common, "--out", "p.json", "--budget-s", "20")
    sweep = [*common, "workload=random_tiny", "workload.max_token_id=500", "workload.input_len=[4,24]",
             "workload.output_len=[4,24]", "workload.request_rate=100,inf", "print_outputs=false"]
    run("nvllm.run", "-m", *sweep, "hydra.sweep.dir=measured")
    run("nvllm.run", "-m", *sweep, "forward=simulated", "forward.profile=p.json", "hydra.sweep.dir=simulated")
    out = run("nvllm.tools.sim_validate", "measured", "simulated", "--out", "validation", "--record", "p.json")
    assert "2 pairs" in out and (tmp_path / "validation" / "validation.png").stat().st_size > 1000
    run("nvllm.run", *sweep[:-2], "workload.request_rate=inf", "forward=simulated", "forward.profile=p.json",
        "hydra.run.dir=again")
    m = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert m["simulation"]["measured_error"]["all"]["pairs"] == 2
    assert "SIMULATED (profile p.json, cpu)" in run("nvllm.tools.report", "simulated")
