"""The prepared GPU scripts at least run their logic here: the benchmark in --smoke mode on the
CPU, and the shell script parses."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_gpu.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.splitlines()[-2:]
    assert table[0].startswith("eager") and "1.00x" in table[0]
    assert table[1].startswith("compile") and "failed" not in table[1]
    assert (tmp_path / "bench_gpu.json").is_file()


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "experiments" / "gpu_check.sh")], check=True)
