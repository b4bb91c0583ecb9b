"""A non-editable install carries conf/ inside the package: `python -m nvllm.run` works from it,
from any working directory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_runs_from_anywhere(tmp_path, tiny_qwen3_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    assert (target / "nvllm" / "conf" / "config.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import nvllm, nvllm.conf; print(nvllm.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    run = subprocess.run([sys.executable, "-m", "nvllm.run", "model=qwen3", f"model.path={tiny_qwen3_path}",
                          "workload=random", "workload.num_seqs=2", "workload.input_len=[3,5]",
                          "workload.output_len=[2,3]", "workload.max_token_id=100", f"hydra.run.dir={tmp_path}/run"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
