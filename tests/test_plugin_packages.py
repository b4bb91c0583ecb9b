"""The packages under plugins/ as a user gets them: pip-installed (not editable) into a directory,
then listed, selectable, sweepable and traced; and absent, with the unknown-name error, from an
environment that lacks them. That environment is a real venv holding everything this one holds
except the plugin packages (however they were installed here), so nothing is mocked."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.test_plugins import make_distribution

# pip builds and installs the four packages and every test runs nvllm in a venv of its own: minutes
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# package directory -> (config group, component name, module)
PACKAGES = {
    "nvllm-sjf": ("scheduler", "sjf", "nvllm_sjf"),
    "nvllm-penalties": ("sampler", "penalties", "nvllm_penalties"),
    "nvllm-lru": ("kv_cache", "lru", "nvllm_lru"),
    "nvllm-mixtral": ("model", "mixtral", "nvllm_mixtral"),
}


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A venv with this venv's site-packages minus the plugin packages (symlinked, so it is cheap)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    modules = [module for _, _, module in PACKAGES.values()]
    for site in {Path(sysconfig.get_path("purelib")), Path(sysconfig.get_path("platlib"))}:
        bare_site = venv / site.relative_to(sys.prefix)
        for entry in site.iterdir():
            # the module, its dist-info and, for an editable install, its .pth and finder all carry the module name
            if not any(module in entry.name for module in modules) and not (bare_site / entry.name).exists():
                (bare_site / entry.name).symlink_to(entry)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The four packages, built and installed by pip exactly as `pip install ./plugins/<pkg>` does,
    into a directory of their own (copies of the sources, so builds leave nothing in plugins/)."""
    tmp = tmp_path_factory.mktemp("plugins")
    sources = [shutil.copytree(ROOT / "plugins" / name, tmp / "src" / name, ignore=shutil.ignore_patterns("tests"))
               for name in PACKAGES]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp / "site"), *map(str, sources)], check=True, capture_output=True)
    return tmp / "site"


def run(python, *args, site=None, cwd=None, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NVLLM_PLUGINS", "NVLLM_TRACE_PLUGINS")}
    if site:
        full_env["PYTHONPATH"] = os.pathsep.join(map(str, site))
    return subprocess.run([python, *args], capture_output=True, text=True, env={**full_env, **env}, cwd=cwd,
                          timeout=600)


def group_line(help_text: str, group: str) -> str:
    return help_text.split(f"{group}: ", 1)[1].splitlines()[0]


def test_uninstalled_they_are_gone(bare_python, tmp_path):
    help_text = run(bare_python, "-m", "nvllm.run", "--help", cwd=tmp_path).stdout
    for group, name, _ in PACKAGES.values():
        assert name not in group_line(help_text, group).split(", ")
    proc = run(bare_python, "-m", "nvllm.run", "scheduler=sjf", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'scheduler/sjf'" in proc.stderr and "Available options in 'scheduler'" in proc.stderr
    assert "\tfcfs" in proc.stderr
    proc = run(bare_python, "-c", "from nvllm import registry; from nvllm.plugins import load_plugins; "
               "load_plugins(); registry.get('kv_cache', 'lru')", cwd=tmp_path)
    assert "unknown kv_cache 'lru'; valid names: paged" in proc.stderr
    assert "appears here once the package is pip-installed" in proc.stderr


def test_installed_they_are_listed_and_sweep_beside_the_built_ins(bare_python, plugin_site, tiny_qwen3_path, tmp_path):
    help_text = run(bare_python, "-m", "nvllm.run", "--help", site=[plugin_site], cwd=tmp_path).stdout
    for group, name, _ in PACKAGES.values():
        assert name in group_line(help_text, group).split(", "), (group, name)
    proc = run(bare_python, "-m", "nvllm.run", "-m", "scheduler=fcfs,sjf", "kv_cache=lru", "sampler=penalties",
               "sampler.frequency_penalty=0.5", "model=qwen3", f"model.path={tiny_qwen3_path}", "workload=random",
               "workload.num_seqs=3", "workload.input_len=[3,8]", "workload.output_len=[2,4]",
               "workload.max_token_id=100", f"hydra.sweep.dir={tmp_path}/sweep", site=[plugin_site], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text())["effective_config"] for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert [(r["scheduler"], r["kv_cache"]["name"], r["sampler"]) for r in runs] == [
        ("fcfs", "lru", "penalties"), ("sjf", "lru", "penalties")]
    assert runs[0]["kv_cache"]["protect_after_hits"] == 2  # the plugin's Config composed with its defaults


def test_trace_names_every_hook_call_and_what_it_registered(bare_python, plugin_site, tmp_path):
    registers_nothing = "from nvllm import hookimpl\n@hookimpl\ndef register_samplers(register):\n    pass\n"
    empty = make_distribution(tmp_path / "empty", name="nvllm-empty", module="nvllm_empty", ep_name="empty",
                              body=registers_nothing)
    code = "from nvllm.plugins import load_plugins; load_plugins()"
    proc = run(bare_python, "-c", code, site=[plugin_site, empty], cwd=tmp_path, NVLLM_TRACE_PLUGINS="1")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nvllm plugin trace: ")]
    assert "nvllm plugin trace: register_schedulers of nvllm.scheduler.fcfs registered scheduler 'fcfs' " \
           "(nvllm.scheduler.fcfs.FCFSScheduler)" in lines
    for hook, (group, name, module) in zip(("register_schedulers", "register_samplers", "register_kv_caches",
                                            "register_models"), PACKAGES.values(), strict=True):
        dist = module.replace("_", "-")
        assert any(line.startswith(f"nvllm plugin trace: {hook} of {dist} (entry point '{name}' = {module}) "
                                   f"registered {group} '{name}' ({module}.") for line in lines), (hook, lines)
    assert "nvllm plugin trace: register_samplers of nvllm-empty (entry point 'empty' = nvllm_empty) " \
           "registered nothing" in lines
    for quiet in ({}, {"NVLLM_TRACE_PLUGINS": "0"}):
        proc = run(bare_python, "-c", code, site=[plugin_site], cwd=tmp_path, **quiet)
        assert proc.returncode == 0 and "nvllm plugin trace" not in proc.stderr
