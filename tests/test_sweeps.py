"""Ablation sweeps end to end: a multirun on a tiny model records every run's status, the report
lists every run (also the ones made to fail), every named experiment composes cell by cell, and
the launchers (submitit_local, joblib) run a two-job sweep."""
import csv
import functools
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nvllm import registry
from nvllm.config import DEFAULT_MAX_MODEL_LEN, Config, setup
from nvllm.errors import ConfigError
from nvllm.tools.report import main, report
from nvllm.workloads import assign_priorities, build_requests

setup()
EXPERIMENT_DIR = Path(__import__("nvllm.conf").conf.__file__).parent / "experiment"
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def tiny(path) -> list[str]:
    return ["model=qwen3", f"model.path={path}", "workload=random_tiny", "workload.max_token_id=500",
            "workload.num_seqs=4", "workload.output_len=[2,6]", "max_model_len=160"]


def nvllm_run(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(sweep: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(sweep)): json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_qwen3_path):
    """2 schedulers x 2 budgets x 2 temperatures x 2 repeats: fcfs refuses the budget of 64
    (skipped) and temperature -1 is invalid (failed)."""
    cwd = tmp_path_factory.mktemp("sweep")
    nvllm_run("-m", *tiny(tiny_qwen3_path), "workload.priorities=[0,3]", "scheduler=fcfs,chunked",
              "max_num_batched_tokens=64,256", "sampling.temperature=0,-1", "repeat=0,1", "hydra.sweep.dir=sweep",
              cwd=cwd)
    return cwd / "sweep"


def test_multirun_records_every_runs_status_and_carries_on(sweep):
    runs = metrics(sweep)
    assert len(runs) == 16
    for m in runs.values():
        o = dict(x.split("=", 1) for x in m["overrides"])
        if o["sampling.temperature"] == "-1":  # the requests are built, and refused, before the model loads
            assert m["status"] == "failed" and m["reason"].startswith("ValueError: temperature must be >= 0")
        elif o["scheduler"] == "fcfs" and o["max_num_batched_tokens"] == "64":
            assert m["status"] == "skipped" and "must be >= max_model_len" in m["reason"]
        else:
            assert m["status"] == "ok" and m["total_output_tokens"] > 0
            eff = m["effective_config"]
            assert eff["scheduler"] == o["scheduler"] and eff["max_num_batched_tokens"] == int(o["max_num_batched_tokens"])
            assert m["requested_config"]["repeat"] == int(o["repeat"])
            assert set(m["ttft_ms_by_priority"]) == {"2", "3"}  # the seeded draws for 4 requests
        assert m["requested_config"]["scheduler"]["name"] == o["scheduler"]


def test_report_lists_every_run(sweep, tmp_path):
    md = report(sweep, tmp_path).read_text()
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 8, "one row per configuration; repeats fold into one"
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "skipped", "failed")}
    assert [len(by_status[s]) for s in ("ok", "skipped", "failed")] == [3, 1, 4]
    for r in rows:
        assert r["runs"] == "2" and len(r["run_dirs"].split()) == 2
    for r in by_status["ok"]:
        assert float(r["output_throughput_min"]) <= float(r["output_throughput_median"]) <= float(r["output_throughput_max"])
    assert all("temperature must be >= 0" in r["reason"] for r in by_status["failed"])
    assert "16 runs (6 ok, 2 skipped, 8 failed)" in md
    for name, m in metrics(sweep).items():  # every unfinished run is listed by its directory, with its reason
        if m["status"] != "ok":
            assert re.search(rf"\| `{name}` +\| {m['status']} +\|", md)
    assert "`sampling.temperature`" in md and "`scheduler`" in md and "`max_num_batched_tokens`" in md
    assert re.search(r"TTFT p50 \((ms|s)\) by request priority", md), md
    assert re.search(r"\| priority 2 +\| priority 3 +\|", md)
    assert "Columns:" in md and "**output throughput (tok/s)**: generated tokens / the generate loop's wall time" in md
    pytest.importorskip("matplotlib")
    for axis in ("scheduler", "max_num_batched_tokens", "sampling.temperature"):
        assert (tmp_path / f"by_{axis}.png").stat().st_size > 1000
        assert f"(by_{axis}.png)" in md


def test_report_command(sweep, tmp_path, capsys):
    main([str(sweep), "--out", str(tmp_path)])
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no metrics.json under"):
        main([str(tmp_path)])


def test_single_run_failure_exits_nonzero(tmp_path, tiny_qwen3_path):
    proc = nvllm_run(*tiny(tiny_qwen3_path), "sampling.temperature=-1", f"hydra.run.dir={tmp_path}/run",
                     cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "temperature must be >= 0" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# -- named experiments ----------------------------------------------------------------------

def cells(experiment: str) -> tuple[dict, list[list[str]]]:
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    grid = itertools.product(*([f"{k}={v.strip()}" for v in str(values).split(",")] for k, values in params.items()))
    return cfg, [[f"experiment={experiment}", *cell] for cell in grid]


def test_load_report_plots_against_the_achieved_rate(tmp_path):
    """A request_rate sweep gets load.png and the serving columns; made-up runs, no model."""
    from nvllm.metrics import RequestTiming, serving_metrics

    for n, (scheduler, rate) in enumerate(itertools.product(("fcfs", "chunked"), (1, 2, 4))):
        timings = [RequestTiming(i / rate, [i / rate + 0.1 * rate, i / rate + 0.3 * rate], 8, 2) for i in range(6)]
        m = {"status": "ok", "overrides": [f"scheduler={scheduler}", f"workload.request_rate={rate}"],
             "device": "cpu", "versions": {}, "requested_config": {"slo": {"ttft_ms": 250, "tpot_ms": None}},
             **serving_metrics(timings, duration=6 / rate + 1, slo={"ttft_ms": 250}, request_rate=rate)}
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "metrics.json").write_text(json.dumps(m))
    md = report(tmp_path).read_text()
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [float(r["achieved_rate_median"]) for r in rows] == pytest.approx([1, 2, 4] * 2)
    assert [float(r["goodput_median"]) for r in rows[:3]] == pytest.approx([6 / 7, 1.5, 0])  # TTFT 0.1, 0.2, 0.4 s
    assert "TTFT p99 (ms)" in md and "ITL p99 (ms)" in md and "achieved rate (req/s)" in md
    pytest.importorskip("matplotlib")
    assert (tmp_path / "load.png").stat().st_size > 1000 and "(load.png)" in md


def test_report_shows_no_rate_for_an_offline_batch_of_an_older_metrics_json(tmp_path):
    """Before metrics.json left it null, an offline batch had an 'achieved' rate of thousands of
    req/s (the time it took to queue the batch); the report drops it where no rate was set."""
    for n, rate in enumerate((None, 2)):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "metrics.json").write_text(json.dumps(
            {"status": "ok", "overrides": [f"scheduler={('fcfs', 'chunked')[n]}"], "device": "cpu", "versions": {}, "request_rate": rate,
             "achieved_request_rate": 5555.0 if rate is None else 1.9, "output_throughput": 10.0}))
    report(tmp_path)
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert sorted(r["achieved_rate_median"] for r in rows) == ["", "1.9"]


def test_experiments_exist():
    assert {"optimisations", "schedulers", "prefix_sharing", "kv_block_size", "load_sweep"} <= set(EXPERIMENTS)


def test_the_experiments_readme_lists_every_experiment():
    readme = (Path(__file__).resolve().parents[1] / "experiments" / "README.md").read_text()
    for experiment in EXPERIMENTS:
        assert f"| `{experiment}` |" in readme, f"experiments/README.md does not list {experiment}"


def test_an_experiment_kept_outside_the_package(tmp_path):
    """experiments/README.md: a folder laid out like conf/, on Hydra's search path."""
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    (tmp_path / "my_conf" / "workload").mkdir()
    (tmp_path / "my_conf" / "experiment" / "my_ablation.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /workload: my_prompts\nprint_outputs: false\n")
    (tmp_path / "my_conf" / "workload" / "my_prompts.yaml").write_text("defaults: [file]\npath: prompts.txt\n")
    for where in (["--config-dir", str(tmp_path / "my_conf")], [f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"]):
        proc = nvllm_run(*where, "experiment=my_ablation", "--cfg", "job", cwd=tmp_path)
        assert "name: file" in proc.stdout and "path: prompts.txt" in proc.stdout and "print_outputs: false" in proc.stdout


# cells an experiment sweeps knowing nvllm refuses them (its report shows them skipped): all of
# these overrides together
REFUSED = {"quantization": ("quantization=none", "quantization.activations=int8")}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_cell_of_every_experiment_composes(experiment):
    """Every configuration the sweep would run composes, its components' configs type-check, and
    its workload builds (each distinct workload once); nothing runs. Repeats are swept. An experiment
    of an architecture that is not registered here (a plugin's, not installed) is skipped, named.
    The cells REFUSED names are refused by name (a ConfigError), and only those."""
    model = re.search(r"^  - override /model: (\w+)", (EXPERIMENT_DIR / f"{experiment}.yaml").read_text(), re.M)
    if model and model.group(1) not in registry.names("model"):
        pytest.skip(f"experiment={experiment} runs model={model.group(1)}, which is not registered here")
    cfg, grid = cells(experiment)
    assert cfg.hydra.sweep.dir.startswith(f"multirun/{experiment}/")
    assert "repeat" in cfg.hydra.sweeper.params and len(grid) > 1
    built, refused = set(), REFUSED.get(experiment)
    for overrides in grid:
        with initialize_config_module("nvllm.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        if refused and set(refused) <= set(overrides):
            with pytest.raises(ConfigError):
                Config.from_cfg(cfg)
            continue
        typed = Config.from_cfg(cfg)
        for group in registry.FAMILIES:
            component = getattr(typed, group)  # attention=auto, forward=auto stay "auto" until the engine resolves them
            assert component == "auto" if group in ("attention", "forward") and cfg[group].name == "auto" \
                else component.name in registry.names(group)
        arrivals = ("request_rate", "burstiness", "max_concurrency")  # build_requests does not read them
        workload = str({k: v for k, v in OmegaConf.to_container(cfg.workload).items() if k not in arrivals}) + \
            OmegaConf.to_yaml(cfg.sampling) + str(cfg.max_model_len)
        if workload in built:
            continue
        built.add(workload)
        tokenizer = smollm2_tokenizer() if cfg.workload.name in ("chat", "grounded") else None
        prompts, params = build_requests(cfg.workload, cfg.sampling, tokenizer=tokenizer)
        assert prompts and len(prompts) == len(params)
        max_model_len = cfg.max_model_len or DEFAULT_MAX_MODEL_LEN  # null: auto, at most that
        assert max(len(p) + sp.max_tokens for p, sp in zip(prompts, params)) <= max_model_len


@functools.cache
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from nvllm.models.weights import smollm2_path

    return AutoTokenizer.from_pretrained(smollm2_path())


def test_command_line_overrides_an_experiment(tmp_path):
    out = nvllm_run("experiment=schedulers", "workload=random_small", "max_model_len=300", "--cfg", "job",
                    cwd=tmp_path).stdout
    assert "num_seqs: 16" in out and "max_model_len: 300" in out and "- 2" in out  # workload.priorities kept


# -- workloads -------------------------------------------------------------------------------

def workload(*overrides):
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_shared_prefix_share_ratio_changes_only_the_prefixes():
    prompts = {}
    for ratio in (0, 0.5, 1):
        cfg = workload("workload=shared_prefix", f"workload.share_ratio={ratio}")
        prompts[ratio], params = build_requests(cfg.workload, cfg.sampling, None)
        assert [p.max_tokens for p in params] == [p.max_tokens for p in build_requests(cfg.workload, cfg.sampling, None)[1]]
        again, _ = build_requests(cfg.workload, cfg.sampling, None)
        assert again == prompts[ratio], "same config, same prompts"
    n, plen = cfg.workload.num_seqs, cfg.workload.prefix_len
    assert [len(p) for p in prompts[0]] == [len(p) for p in prompts[1]], "the same work at every ratio"
    assert [p[plen:] for p in prompts[0]] == [p[plen:] for p in prompts[1]]
    distinct = {r: len({tuple(p[:plen]) for p in prompts[r]}) for r in prompts}
    assert distinct == {0: n, 0.5: n // 2 + cfg.workload.num_prefixes, 1: cfg.workload.num_prefixes}


def test_priorities_are_seeded_and_leave_the_prompts_alone():
    cfg = workload("workload=random_tiny", "workload.priorities=[0,3]")
    assert assign_priorities(workload("workload=random_tiny").workload, 8) is None
    first = assign_priorities(cfg.workload, 8)
    assert first == assign_priorities(cfg.workload, 8) and set(first) <= {0, 1, 2, 3} and len(set(first)) > 1
    plain = workload("workload=random_tiny")
    assert build_requests(cfg.workload, cfg.sampling, None)[0] == build_requests(plain.workload, plain.sampling, None)[0]


# -- launchers -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_launcher_runs_a_two_job_sweep(tmp_path, tiny_qwen3_path, launcher):
    pytest.importorskip({"submitit_local": "hydra_plugins.hydra_submitit_launcher",
                         "joblib": "hydra_plugins.hydra_joblib_launcher"}[launcher])
    extra = ["hydra.launcher.timeout_min=10"] if launcher == "submitit_local" else ["hydra.launcher.n_jobs=2"]
    nvllm_run("-m", f"hydra/launcher={launcher}", *extra, *tiny(tiny_qwen3_path), "scheduler=fcfs,chunked",
              "hydra.sweep.dir=sweep", cwd=tmp_path)
    runs = metrics(tmp_path / "sweep")
    assert sorted(m["effective_config"]["scheduler"] for m in runs.values()) == ["chunked", "fcfs"]
    assert all(m["status"] == "ok" for m in runs.values())


@pytest.mark.slow
def test_experiment_runs_from_a_non_editable_install(tmp_path, tiny_qwen3_path):
    """conf/experiment ships inside the package: a named experiment sweeps from any directory."""
    target = tmp_path / "site"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(root)], check=True, capture_output=True)
    assert (target / "nvllm" / "conf" / "experiment" / "schedulers.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import nvllm.conf; print(nvllm.conf.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "-m", "experiment=schedulers", *tiny(tiny_qwen3_path),
                           "scheduler=chunked", "max_num_batched_tokens=64", "repeat=0", "hydra.sweep.dir=sweep"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (m,) = metrics(tmp_path / "sweep").values()
    assert m["status"] == "ok" and m["versions"]["nvllm"]
    assert "experiment=schedulers" in m["overrides"] and m["requested_config"]["workload"]["priorities"] == [0, 2]
