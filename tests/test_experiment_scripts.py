"""The prepared GPU scripts run their logic here: the whole device check in --smoke mode on the
CPU (tiny model, tiny workloads, a step's trace, a profile and the benchmark simulated from it), nano-vllm's
workload drawn exactly, and the wheel set installing, offline, into an empty directory where
`import nvllm.conf` then works."""
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def test_workload_is_nano_vllms():
    from bench_gpu import NANO_VLLM_OUTPUT_TOKENS, workload

    prompts, max_tokens = workload()
    assert len(prompts) == 256 and sum(max_tokens) == NANO_VLLM_OUTPUT_TOKENS == 133_966
    assert all(100 <= len(p) <= 1024 for p in prompts) and max(max(p) for p in prompts) == 10000


def test_busy_time_is_the_union_of_kernel_intervals():
    """The trace's device time: overlapping kernels (two streams) count once, gaps not at all."""
    from gpu_trace import busy_time

    assert busy_time([]) == 0
    assert busy_time([(0, 10), (5, 12), (20, 25), (21, 22), (30, 30)]) == 17
    assert busy_time([(20, 25), (0, 10)]) == 15


def test_gpu_scripts_parse():
    for script in ("gpu_check.sh", "gpu_wheels.sh", "gpu_install.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "experiments" / script)], check=True)


@pytest.mark.slow
@pytest.mark.serial  # its parts run under time caps: alone, not beside another worker's tests
def test_gpu_check_smoke(tmp_path):
    """One call, as on the device: parts under caps, JSON under $OUT, the table last."""
    env = {**os.environ, "OUT": str(tmp_path), "WHEEL_DIR": str(tmp_path / "none"),  # this venv, no install
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = json.loads((tmp_path / "check.json").read_text())
    parts = {p["part"]: p for p in check["parts"]}
    assert list(parts) == ["tests", "parity", "kernels", "trace", "bench", "profile"], parts
    assert all(p["status"] == "ok" for p in parts.values()), parts
    cells = {r["cell"]: r for r in parts["parity"]["results"][1:]}
    assert cells["sdpa cudagraph=false compile=false"]["status"] == "match"
    assert cells["cpu cudagraph=false compile=true"]["status"] == "match"
    assert cells["sdpa cudagraph=true compile=false"]["status"] == "refused"  # no CUDA here
    kernels = {r.get("cell", "tests"): r for r in parts["kernels"]["results"]}
    assert kernels["tests"]["tests"] == "ok"  # on a CPU every one of them is a cuda case: skipped
    assert [kernels[c]["status"] for c in ("quantization=int8 forward=eager", "quantization=int4 forward=eager",
                                           "qwen3_moe forward=eager", "qwen3_moe forward=cudagraph")] == \
        ["match", "match", "match", "refused"]
    trace = parts["trace"]["results"]
    assert trace["steps"] == 5 and trace["batch"] > 0 and trace["top"] and trace["wall_ms_per_step"] > 0
    assert (tmp_path / "trace" / "trace.json.gz").stat().st_size > 0 and "-- trace --" in proc.stdout
    bench = {r["config"]: r for r in parts["bench"]["results"]}
    assert bench["defaults"]["effective"]["attention"] == "cpu" and bench["defaults"]["output_tokens"] > 0
    assert bench["hf"]["output_tokens"] > 0
    profile = parts["profile"]["results"]  # a profile of the tiny shape, and the bench simulated from it beside the measured one
    assert profile["profiles"]["tiny"]["forward"] == "fused_cpu" and profile["bench_simulated"]["output_tokens"] > 0
    assert profile["bench_measured_tok_s"] == bench["defaults"]["tok_s"] and "bench_error" in profile
    assert "-- bench --" in proc.stdout and proc.stdout.rstrip().splitlines()[-1].startswith("machine:")


# what the GPU image lacks and the wheels bring: hidden from the image-like Python below
NOT_ON_THE_IMAGE = ("hydra", "omegaconf", "antlr4", "hypothesis", "attrs", "sortedcontainers", "gguf", "setuptools",
                    "_distutils_hack", "distutils-precedence", "accelerate", "submitit", "nvllm", "__editable__",
                    "tabulate", "prometheus_client", "pytz", "tzdata")


def image_like_python(root: Path) -> Path:
    """A Python 3.11 venv that sees this venv's packages but none of NOT_ON_THE_IMAGE (nor the
    editable nvllm and its plugins): torch, transformers, pytest, pyyaml, xxhash, pip... as on
    the GPU image, where PyYAML, xxhash and pandas are the carried cp312 wheels instead."""
    site = Path(sysconfig.get_paths()["purelib"])
    farm = root / "farm"
    farm.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().replace("-", "_").startswith(tuple(n.replace("-", "_") for n in NOT_ON_THE_IMAGE)):
            (farm / entry.name).symlink_to(entry)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "farm.pth").write_text(str(farm) + "\n")
    return python


@pytest.mark.slow
def test_wheels_install_into_an_empty_target(tmp_path):
    """gpu_wheels.sh's set for the GPU image (needs PyPI): Python 3.12, pure-python or cp312
    manylinux x86_64, under the carry's 64 MiB. Then, as gpu_check.sh does on the device, offline:
    gpu_install.sh into an empty directory from a Python without hydra, omegaconf or nvllm;
    `import nvllm.conf` and `python -m nvllm.run --help` work from there, and the check's tests
    part collects and runs. The binary wheels are cp312: where a Python 3.12 is at hand they are
    installed and imported under it; the 3.11 Python here uses its own PyYAML, xxhash and pandas."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    env = {**os.environ, "WHEEL_DIR": str(wheels), "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "experiments" / "gpu_wheels.sh")], env=env, check=True, timeout=600,
                   capture_output=True)
    names = sorted(p.name for p in wheels.iterdir())
    assert {n.split("-")[0].lower() for n in names} == {
        "antlr4_python3_runtime", "attrs", "gguf", "hydra_core", "hypothesis", "omegaconf", "pyyaml", "setuptools",
        "sortedcontainers", "xxhash", "pandas", "pytz", "tzdata", "tabulate", "prometheus_client"}, names
    binary = [n for n in names if not n.endswith("-none-any.whl")]
    assert sorted(n.split("-")[0].lower() for n in binary) == ["pandas", "pyyaml", "xxhash"]
    assert all("-cp312-cp312-" in n and "manylinux" in n and n.endswith("x86_64.whl") for n in binary), binary
    assert sum(p.stat().st_size for p in wheels.iterdir()) < 64 * 2**20

    python312 = _python312()
    if python312:  # the binaries, under the image's Python version
        subprocess.run([python312, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                        str(tmp_path / "site312"), *map(str, wheels.iterdir())], check=True, timeout=300)
        # a bare 3.12: no packaging for hydra; the binaries and what imports them
        imports = "import yaml, yaml._yaml, xxhash, omegaconf, hypothesis; omegaconf.OmegaConf.create('a: 1')"
        subprocess.run([python312, "-c", imports], env={**os.environ, "PYTHONPATH": str(tmp_path / "site312")},
                       cwd=tmp_path, check=True, timeout=120)

    pure = tmp_path / "pure"
    pure.mkdir()
    for name in set(names) - set(binary):
        (pure / name).symlink_to(wheels / name)
    python = image_like_python(tmp_path)
    bare = subprocess.run([str(python), "-c", "import hydra"], capture_output=True, timeout=120)
    assert bare.returncode != 0  # the image has no hydra: the wheels must bring it
    env = {**os.environ, "WHEEL_DIR": str(pure), "PYTHON": str(python)}
    subprocess.run(["bash", str(ROOT / "experiments" / "gpu_install.sh"), str(target)], env=env, check=True,
                   timeout=600, capture_output=True)
    run_env = {**os.environ, "PYTHONPATH": str(target)}
    script = ("import hydra, nvllm, nvllm.conf; from nvllm.config import compose; "
              "print(nvllm.__file__, hydra.__file__, compose().attention.name)")
    out = subprocess.run([str(python), "-c", script], env=run_env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    nvllm_file, hydra_file, attention = out.stdout.split()
    assert nvllm_file.startswith(str(target)) and hydra_file.startswith(str(target)) and attention == "auto"
    helped = subprocess.run([str(python), "-m", "nvllm.run", "--help"], env=run_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "attention" in helped.stdout, helped.stdout[-2000:] + helped.stderr[-2000:]

    # the check's own install and tests part, from this image-like Python and the pure wheels
    check = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--smoke", "--parts", "tests"],
                           env={**env, "OUT": str(tmp_path / "out")}, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "/site/nvllm/__init__.py" in check.stdout and "skipped" in check.stdout  # installed nvllm; no CUDA: skips


def _python312() -> str | None:
    """A Python 3.12 on this machine, if any (pyenv keeps them out of PATH)."""
    candidates = [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode == 0:
            return candidate
    return None
