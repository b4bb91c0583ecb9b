"""The prepared GPU scripts run their logic here: the whole device check in --smoke mode on the
CPU (tiny model, tiny workloads), nano-vllm's workload drawn exactly, and the wheel set
installing, offline, into an empty directory where `import nvllm.conf` then works."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def test_workload_is_nano_vllms():
    from bench_gpu import NANO_VLLM_OUTPUT_TOKENS, workload

    prompts, max_tokens = workload()
    assert len(prompts) == 256 and sum(max_tokens) == NANO_VLLM_OUTPUT_TOKENS == 133_966
    assert all(100 <= len(p) <= 1024 for p in prompts) and max(max(p) for p in prompts) == 10000


def test_gpu_scripts_parse():
    for script in ("gpu_check.sh", "gpu_wheels.sh", "gpu_install.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "experiments" / script)], check=True)


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    """One call, as on the device: parts under caps, JSON under $OUT, the table last."""
    env = {**os.environ, "OUT": str(tmp_path), "WHEEL_DIR": str(tmp_path / "none"),  # this venv, no install
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    parts = {p["part"]: p for p in check["parts"]}
    assert list(parts) == ["tests", "parity", "bench"] and all(p["status"] == "ok" for p in parts.values()), parts
    cells = {r["cell"]: r for r in parts["parity"]["results"][1:]}
    assert cells["sdpa cudagraph=false compile=false"]["status"] == "match"
    assert cells["cpu cudagraph=false compile=true"]["status"] == "match"
    assert cells["sdpa cudagraph=true compile=false"]["status"] == "refused"  # no CUDA here
    bench = {r["config"]: r for r in parts["bench"]["results"]}
    assert bench["defaults"]["effective"]["attention"] == "cpu" and bench["defaults"]["output_tokens"] > 0
    assert bench["hf"]["output_tokens"] > 0
    assert "-- bench --" in proc.stdout and proc.stdout.rstrip().splitlines()[-1].startswith("machine:")


@pytest.mark.slow
def test_wheels_install_into_an_empty_target(tmp_path):
    """gpu_wheels.sh (PyPI) for this Python, then gpu_install.sh offline into an empty directory:
    nvllm (with nvllm.conf) and hydra come from there, and the default config composes."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    env = {**os.environ, "WHEEL_DIR": str(wheels), "PYTHON": sys.executable,
           "PY_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}"}
    subprocess.run(["bash", str(ROOT / "experiments" / "gpu_wheels.sh")], env=env, check=True, timeout=600,
                   capture_output=True)
    names = sorted(p.name for p in wheels.iterdir())
    assert any(n.startswith("antlr4_python3_runtime-4.9.3") for n in names) and any(n.startswith("hydra_core") for n in names)
    assert sum(p.stat().st_size for p in wheels.iterdir()) < 64 * 2**20
    subprocess.run(["bash", str(ROOT / "experiments" / "gpu_install.sh"), str(target)], env=env, check=True,
                   timeout=600, capture_output=True)
    script = ("import hydra, nvllm, nvllm.conf; from nvllm.config import compose; "
              "print(nvllm.__file__, hydra.__file__, compose().attention.name)")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(target)},
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    nvllm_file, hydra_file, attention = out.stdout.split()
    assert nvllm_file.startswith(str(target)) and hydra_file.startswith(str(target)) and attention == "auto"
