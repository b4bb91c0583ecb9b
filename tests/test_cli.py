"""The `nvllm` command (a console script) beside the python -m forms: run, serve with vLLM's
--host/--port/--api-key, bench serve, report; and what a run logs (Hydra's run.log holds what the
console shows)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nvllm.cli import serve_overrides

NVLLM = shutil.which("nvllm", path=str(Path(sys.executable).parent)) or "nvllm"


def nvllm(*args, cwd, timeout=600):
    return subprocess.run([NVLLM, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_serve_options_become_hydra_keys():
    assert serve_overrides(["--port", "8001", "--host=0.0.0.0", "--api-key", "k", "scheduler=chunked"]) == \
        ["serve.port=8001", "serve.host=0.0.0.0", "serve.api_key=k", "scheduler=chunked"]
    with pytest.raises(SystemExit, match="--port needs a value"):
        serve_overrides(["--port"])


@pytest.mark.slow  # every command's --help, each in a fresh process
def test_help_of_every_command(tmp_path):
    out = nvllm("--help", cwd=tmp_path)
    assert out.returncode == 0 and "nvllm serve [--host H] [--port P] [--api-key K]" in out.stdout
    run_help = nvllm("run", "--help", cwd=tmp_path)
    assert run_help.returncode == 0 and "== Configuration groups ==" in run_help.stdout and "workload=sharegpt" in run_help.stdout
    bench_help = nvllm("bench", "serve", "--help", cwd=tmp_path)
    assert bench_help.returncode == 0 and "usage: nvllm bench serve" in bench_help.stdout and "--dataset-name" in bench_help.stdout
    assert nvllm("bench", cwd=tmp_path).returncode != 0 and nvllm("launch", cwd=tmp_path).returncode != 0


def test_nvllm_run_logs_to_the_console_and_run_log(tmp_path, tiny_qwen3_path):
    proc = nvllm("run", "model=qwen3", f"model.path={tiny_qwen3_path}", "workload=random_tiny", "workload.num_seqs=3",
                 "workload.output_len=[2,4]", "workload.max_token_id=500", "max_model_len=160",
                 f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    startup = re.search(r"nvllm: model=qwen3 \(.*RANDOM WEIGHTS\) on cpu, float32, tp=1; forward=\w+ \(auto\), "
                        r"attention=\w+ \(auto\); KV cache \d+ blocks x 256 tokens = [\d.]+ GiB", proc.stdout)
    assert startup, proc.stdout
    assert re.search(r"3 requests \(0 rejected\), \d+ prompt \+ \d+ output tokens in [\d.]+ s: [\d.]+ output tok/s, "
                     r"median TTFT \d+ ms, median TPOT [\d.]+ ms", proc.stdout)
    log = (tmp_path / "run" / "run.log").read_text()
    for line in (startup.group(0), "median TTFT", "metrics: "):
        assert line in log
    assert "RANDOM WEIGHTS" in proc.stderr and "[WARNING]" in log  # a warning: stderr, and the log
    json.loads((tmp_path / "run" / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))


@pytest.mark.slow  # a fresh nvllm process per refusal
def test_a_workload_that_cannot_run_is_refused_before_the_model_loads(tmp_path, tiny_qwen3_path):
    for args, message in ((["workload=file"], "workload.path is required by workload=file"),
                          (["workload=file", f"workload.path={tmp_path}/none.txt"], "workload.path="),
                          (["workload=chat"], "workload=chat sends each prompt through the model's chat template, "
                                                  "and this model's tokenizer has none")):
        proc = nvllm("run", "model=qwen3", f"model.path={tiny_qwen3_path}", *args, f"hydra.run.dir={tmp_path}/run",
                     cwd=tmp_path)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and "nvllm: model=" not in proc.stdout  # the engine never started


def test_nvllm_serve_takes_vllms_options(tmp_path, tiny_qwen3_path):
    proc = subprocess.Popen([NVLLM, "serve", "--port", "0", "--host", "127.0.0.1", "model=qwen3",
                             f"model.path={tiny_qwen3_path}", "max_model_len=128", f"hydra.run.dir={tmp_path}/serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        url = None
        for line in proc.stdout:
            if m := re.search(r"ready on (http://\S+)", line):
                url = m.group(1)
                break
        assert url and url.startswith("http://127.0.0.1:")
        answer = httpx.post(f"{url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2, "n": 2}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["choices"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)
    assert "request cmpl-" in (tmp_path / "serve" / "serve.log").read_text()


def test_python_m_beside_a_clone_named_nvllm(tmp_path, tiny_qwen3_path):
    """docs/plugins.md's layout: a plugin beside the clone, commands run from the directory holding both.
    There `python -m` puts the clone (a directory named nvllm, no __init__.py) first on sys.path, where
    it hides the package as a namespace package: the entry points use the real one and say so."""
    (tmp_path / "nvllm").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    run = subprocess.run([sys.executable, "-m", "nvllm.run", "model=qwen3", f"model.path={tiny_qwen3_path}",
                          "workload=random_tiny", "workload.num_seqs=2", "workload.output_len=[2,2]",
                          "workload.max_token_id=500", "max_model_len=160", f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"nvllm: {tmp_path / 'nvllm'} hides the installed nvllm package" in run.stderr
    assert "2 requests (0 rejected)" in run.stdout
    serve = subprocess.run([sys.executable, "-m", "nvllm.serve", "serve.port=70000"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert serve.returncode == 1 and serve.stderr.splitlines()[-1].startswith("nvllm.serve: serve.port=70000"), \
        serve.stderr[-3000:]


# a user's mistake on the command line: one line on stderr naming the key and the fix, exit 1, no traceback
MISTAKES = {
    "a required group deleted": (["~model"], "nvllm: model is required and the command line deleted it (~model): "
                                             "choose one with model=<name> ("),
    "an interpolation of no key": (["max_num_seqs=${oops}"], "nvllm: max_num_seqs=${oops} does not resolve "
                                                             "(Interpolation key 'oops' not found)"),
    "an unset environment variable": (["max_num_seqs=${oc.env:NVLLM_TEST_UNSET}"],
                                      "nvllm: max_num_seqs=${oc.env:NVLLM_TEST_UNSET} does not resolve"),
    "max_model_len past int64": (["max_model_len=99999999999999999999"],
                                 "nvllm: max_model_len=99999999999999999999 is not allowed: it must be an integer in "
                                 "[1, 2**63)"),
    "max_model_len past the model's": (["max_model_len=2000"], "nvllm: max_model_len=2000 is more than this model's "
                                                               "limit, max_position_embeddings=1024"),
    "an unknown +key": (["+unknown=1"], "nvllm: unknown is not a key nvllm knows"),
    "a misspelt +key": (["+sampling.tempreature=0.5"], "nvllm: sampling.tempreature is not a key nvllm knows (did you "
                                                       "mean sampling.temperature?)"),
    "config.json not JSON": (["config.json=nope{"], "config.json is not valid JSON"),
    "config.json a list": (["config.json=[1, 2]"], "config.json holds a JSON list, not the JSON object"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_users_mistake_is_one_line(tmp_path, tiny_qwen3_path, case):
    args, line = MISTAKES[case]
    model = tiny_qwen3_path
    if args[0].startswith("config.json="):
        model = shutil.copytree(tiny_qwen3_path, tmp_path / "ckpt")
        (model / "config.json").write_text(args[0].split("=", 1)[1])
        args = []
    if args != ["~model"]:
        args = ["model=qwen3", f"model.path={model}", *args]
    proc = nvllm("run", *args, "workload=random_tiny", "workload.max_token_id=500", f"hydra.run.dir={tmp_path}/run",
                 cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nvllm: ") and line.removeprefix("nvllm: ") in last, proc.stderr[-3000:]


@pytest.mark.parametrize("args, line", [(["+serve.prot=8001"], "nvllm.serve: serve.prot is not a key nvllm knows "
                                                                  "(did you mean serve.port?)"),
                                        (["max_num_seqs=${oops}"], "nvllm.serve: max_num_seqs=${oops} does not resolve")])
def test_a_users_mistake_is_one_line_for_serve(tmp_path, args, line):
    proc = nvllm("serve", *args, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr[-3000:]
