"""`python -m nvllm.tools.bench --workload host`: the engine's host work per decode step with the
forward pass replaced by a no-op strategy (registered through the forward family), broken down by
phase; the phases add up to the step."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow  # a host benchmark run in a fresh process
def test_small_host_run_writes_its_breakdown(tmp_path):
    out = tmp_path / "host.json"
    proc = subprocess.run([sys.executable, "-m", "nvllm.tools.bench", "--workload", "host", "--batch-sizes", "4",
                           "--steps", "5", "--warmup", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["batch"], r["sampling"]): r for r in report["rows"]}
    assert set(rows) == {(4, "greedy"), (4, "sampled")}
    for r in rows.values():
        assert "host_bench_noop" in r["effective"]["forward"]
        assert r["decoding"] == r["batch"]  # every request was decoding while the clock ran
        assert r["step_ms"] > 0 and all(v >= 0 for k, v in r["phases_ms"].items() if k != "deltas")
    assert "schedule" in proc.stdout and "postprocess" in proc.stdout


def test_noop_forward_is_never_autos_choice():
    from nvllm.tools.host_bench import NoopForward

    assert NoopForward.auto_rank == {}


@pytest.mark.parametrize("argv", [["--workload", "host", "--help"], ["--workload=host", "--help"]])
def test_bench_hands_the_host_workload_to_its_module(argv, capsys):
    from nvllm.tools import bench

    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 0 and "--batch-sizes" in capsys.readouterr().out
