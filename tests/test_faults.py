"""Faults a user can cause, injected for real: each ends within seconds in one clear message,
with nothing left running (no worker, no resource tracker), no temporary file left behind and
nothing that finished lost. Every run is a subprocess in a session of its own, bounded by a
timeout (a hang fails the test, not the CI run); afterwards the session must be empty and the
run's TMPDIR must hold nothing."""
import getpass
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_plugins import make_distribution

FAULTS = '''
"""sdpa that injects the fault NVLLM_FAULT names, from rank 0 unless said otherwise."""
import multiprocessing, os, signal, threading, time
from dataclasses import dataclass
from nvllm import hookimpl
from nvllm.attention.sdpa import SDPABackend
from nvllm.distributed import tp_rank

FAULT = os.environ.get("NVLLM_FAULT", "").split(":")


def kill(rank):
    for p in multiprocessing.active_children():
        if p.name == f"nvllm-tp{rank}":
            os.kill(p.pid, signal.SIGKILL)


def kill_at_spawn(rank, delay):
    while not any(p.name == f"nvllm-tp{rank}" for p in multiprocessing.active_children()):
        time.sleep(0.01)
    time.sleep(delay)
    kill(rank)


if FAULT[0] == "kill-at-spawn" and multiprocessing.parent_process() is None:
    threading.Thread(target=kill_at_spawn, args=(int(FAULT[1]), float(FAULT[2])), daemon=True).start()


class FaultBackend(SDPABackend):
    name = "fault_sdpa"

    @dataclass
    class Config:
        name: str = "fault_sdpa"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0
        if tp_rank() == 0 and FAULT[0] == "kill-at-build":
            kill(int(FAULT[1]))
        if tp_rank() == 0 and FAULT[0] == "pause-at-build":
            print("FAULT paused at build", flush=True)
            time.sleep(120)

    def prepare(self, meta, block_size):
        self.steps += 1  # steps 1 and 2 are the engine's warm-up (nvllm/engine/warmup.py), before any request
        if tp_rank() == 0 and FAULT[0] == "kill-at-step" and self.steps == int(FAULT[1]):
            kill(int(FAULT[2]))
        if FAULT[0] == "raise-at-step" and self.steps == int(FAULT[1]) and tp_rank() == int(FAULT[2]):
            raise RuntimeError(f"injected failure on rank {tp_rank()}")
        if tp_rank() == 0 and FAULT[0] == "pause-at-step" and self.steps == int(FAULT[1]):
            print("FAULT paused mid-step", flush=True)
            time.sleep(120)
        return super().prepare(meta, block_size)


@hookimpl
def register_attention_backends(register):
    register(FaultBackend)
'''


@pytest.fixture(scope="module")
def fault_site(tmp_path_factory):
    return make_distribution(tmp_path_factory.mktemp("faults"), name="nvllm-faults", module="nvllm_faults",
                             body=FAULTS, ep_name="faults")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # from start, or from the signal when one was sent
    leftovers: list[str]
    signalled: bool = False


def default_sigint():
    """A job started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then
    never turns Ctrl-C into KeyboardInterrupt: the command under test gets the default, as from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Session:
    """One command in a session of its own, its TMPDIR private: what it leaves is checkable."""

    def __init__(self, args, tmp_path: Path, env=None, cwd=None):
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.out, self.err = [], []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd or tmp_path,
                                     start_new_session=True, preexec_fn=default_sigint,
                                     env={**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1",
                                          **TORCH_CACHE, **(env or {})})
        self.start = time.monotonic()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(lambda: s.read(1), "")), daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while text not in "".join(self.out) + "".join(self.err):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.finish(5)
                raise AssertionError(f"never printed {text!r}:\n{''.join(self.out)}\n{''.join(self.err)[-3000:]}")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _session(p) == self.proc.pid]

    signalled = False

    def signal(self, sig, group=True):
        self.start, self.signalled = time.monotonic(), True
        (os.killpg if group else os.kill)(self.proc.pid, sig)

    def finish(self, timeout: float, grace: float = 5) -> Run:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        seconds = time.monotonic() - self.start
        hung = self.proc.poll() is None
        deadline = time.monotonic() + grace  # orphans get a moment to notice their parent is gone
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.orphans_s = time.monotonic() - self.start
        leftovers = [f"process {pid}: {_cmdline(pid)}" for pid in self.pids()]
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        time.sleep(0.1)
        leftovers += [f"temporary file {p}" for p in self.tmp.iterdir()]
        if hung:
            leftovers.insert(0, f"HUNG: still running after {timeout} s")
        return Run(self.proc.returncode, "".join(self.out), "".join(self.err), seconds, leftovers, self.signalled)


# torch makes its compile cache under TMPDIR the first time torch._dynamo is imported (transformers
# imports it), unless TORCHINDUCTOR_CACHE_DIR names another place: that cache is torch's, not a
# leftover of the command under test, so it goes where the test session's own cache is.
TORCH_CACHE = {"TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR")
               or str(Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}")}


def _session(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return "?"


def script(tmp_path, code: str, guard=True, **kwargs) -> Session:
    body = textwrap.dedent(code)
    if guard:
        body = "if __name__ == '__main__':\n" + textwrap.indent(body, "    ")
    (tmp_path / "run.py").write_text(body)
    return Session([sys.executable, "run.py"], tmp_path, **kwargs)


def cli(tmp_path, *overrides, **kwargs) -> Session:
    return Session([sys.executable, "-m", "nvllm.run", *overrides, f"hydra.run.dir={tmp_path}/run"], tmp_path, **kwargs)


def clean(run: Run, within: float):
    print(f"ended {run.seconds:.1f} s after {'the signal' if run.signalled else 'its start'}")
    assert not run.leftovers, "\n".join(run.leftovers) + f"\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr[-3000:]}"
    assert run.seconds < within, f"took {run.seconds:.1f} s\n{run.stdout}\n{run.stderr[-3000:]}"


def tp2(path):
    return ["model=qwen3", f"model.path={path}", "tp=2"]


# -- tensor parallelism: a worker dies, never starts, or the user stops the run --------------
def test_missing_main_guard_is_named(tmp_path, tiny_qwen3_path):
    run = script(tmp_path, f"""
        from nvllm import LLM
        LLM({tiny_qwen3_path!r}, tp=2)
    """, guard=False).finish(120)
    clean(run, 60)
    assert run.returncode != 0
    assert "WorkerError: a tensor-parallel worker failed: rank 1" in run.stderr
    assert 'no `if __name__ == "__main__":` guard' in run.stderr


LLM_GENERATE = """
    from nvllm import LLM, SamplingParams
    llm = LLM({path!r}, tp=2, attention="fault_sdpa")
    outs = llm.generate([[1, 2, 3], [4, 5, 6]], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=40)],
                        use_tqdm=False)
    for o in outs:
        print("OUT", o.outputs[0].finish_reason, len(o.outputs[0].token_ids), o.error)
    try:
        llm.generate([[1, 2]], use_tqdm=False)
    except RuntimeError as e:
        print("AGAIN", e)
    llm.close()
    try:
        llm.generate([[1, 2]], use_tqdm=False)
    except RuntimeError as e:
        print("CLOSED", e)
"""


@pytest.mark.parametrize("fault, phase", [
    pytest.param("kill-at-spawn:1:0", "while starting", marks=pytest.mark.slow),
    ("kill-at-build:1", "while loading its shard of the model"),
])
def test_worker_killed_while_the_engine_builds(tmp_path, tiny_qwen3_path, fault_site, fault, phase):
    run = script(tmp_path, LLM_GENERATE.format(path=tiny_qwen3_path),
                 env={"PYTHONPATH": str(fault_site), "NVLLM_FAULT": fault}).finish(120)
    clean(run, 60)
    assert f"WorkerError: a tensor-parallel worker failed: rank 1 (exit code -9): killed by SIGKILL {phase}" in run.stderr


def test_worker_killed_mid_run_keeps_what_finished(tmp_path, tiny_qwen3_path, fault_site):
    run = script(tmp_path, LLM_GENERATE.format(path=tiny_qwen3_path),
                 env={"PYTHONPATH": str(fault_site), "NVLLM_FAULT": "kill-at-step:8:1"}).finish(120)
    clean(run, 60)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "OUT length 2 None" in lines  # finished before the failure: kept
    assert any(line.startswith("OUT abort ") and "rank 1 (exit code -9): killed by SIGKILL while running a step" in line
               for line in lines), run.stdout
    assert "AGAIN the engine stopped after a failure" in run.stdout
    assert "CLOSED the engine is closed" in run.stdout


def test_cli_worker_killed_mid_run_writes_failed_metrics(tmp_path, tiny_qwen3_path, fault_site):
    run = cli(tmp_path, *tp2(tiny_qwen3_path), "attention=fault_sdpa", "workload=random", "workload.num_seqs=4",
              "workload.input_len=[3,9]", "workload.output_len=[2,60]", "workload.max_token_id=500",
              env={"PYTHONPATH": str(fault_site), "NVLLM_FAULT": "kill-at-step:22:1"}).finish(120)
    clean(run, 60)
    assert run.returncode == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "killed by SIGKILL while running a step" in metrics["reason"]
    assert 0 < metrics["completed"] < 4 and metrics["total_output_tokens"] > 0
    assert "Traceback" not in run.stderr
    assert "failed: WorkerError: a tensor-parallel worker failed: rank 1" in run.stdout


@pytest.mark.parametrize("sig, fault, marker", [
    (signal.SIGINT, "pause-at-step:5", "FAULT paused mid-step"),
    pytest.param(signal.SIGTERM, "pause-at-step:5", "FAULT paused mid-step", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, "pause-at-build", "FAULT paused at build", marks=pytest.mark.slow),
])
def test_cli_stopped_by_a_signal(tmp_path, tiny_qwen3_path, fault_site, sig, fault, marker):
    """Ctrl-C reaches every process of the terminal's group; SIGTERM only the one it was sent to."""
    session = cli(tmp_path, *tp2(tiny_qwen3_path), "attention=fault_sdpa", "workload=random", "workload.num_seqs=2",
                  "workload.input_len=[3,9]", "workload.output_len=[20,20]", "workload.max_token_id=500",
                  env={"PYTHONPATH": str(fault_site), "NVLLM_FAULT": fault})
    session.wait_for(marker)
    session.signal(sig, group=sig == signal.SIGINT)
    run = session.finish(60)
    clean(run, 10)
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert run.stderr.strip().splitlines()[-1] == f"nvllm: stopped by {name}", run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.returncode == (130 if sig == signal.SIGINT else 143)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_signal_while_workers_spawn(tmp_path, tiny_qwen3_path, sig):
    session = cli(tmp_path, *tp2(tiny_qwen3_path), "workload=random")
    deadline = time.monotonic() + 120
    while len(session.pids()) < 3 and time.monotonic() < deadline:  # rank 0, the resource tracker, a worker
        time.sleep(0.02)
    session.signal(sig, group=sig == signal.SIGINT)
    # a worker still importing when rank 0 is SIGKILLed can only notice once its imports are done
    run = session.finish(60, grace=60 if sig == signal.SIGKILL else 5)
    clean(run, 10)
    if sig != signal.SIGKILL:
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        assert run.stderr.strip().splitlines()[-1].startswith("nvllm: stopped by"), run.stderr[-3000:]


@pytest.mark.slow
def test_rank0_killed_mid_run_leaves_nothing(tmp_path, tiny_qwen3_path, fault_site):
    """The Python API installs no signal handler: the workers notice rank 0's death themselves."""
    session = script(tmp_path, LLM_GENERATE.format(path=tiny_qwen3_path),
                     env={"PYTHONPATH": str(fault_site), "NVLLM_FAULT": "pause-at-step:5"})
    session.wait_for("FAULT paused mid-step")
    session.signal(signal.SIGKILL, group=False)
    clean(session.finish(30), 10)


# -- plugins: nothing vanishes without a word ------------------------------------------------
def test_allow_list_name_that_matches_nothing_is_a_warning(tmp_path, fault_site):
    run = Session([sys.executable, "-c", "from nvllm.plugins import load_plugins; load_plugins()"], tmp_path,
                  env={"PYTHONPATH": str(fault_site), "NVLLM_PLUGINS": "fautls"}).finish(120)
    clean(run, 60)
    assert run.returncode == 0
    assert "nvllm: warning: NVLLM_PLUGINS names 'fautls', which no installed plugin provides" in run.stderr
    assert "faults (nvllm-faults)" in run.stderr  # what is installed


def test_duplicate_entry_point_name_names_both_distributions(tmp_path, fault_site):
    site = make_distribution(tmp_path / "site", name="nvllm-other", module="nvllm_other", ep_name="faults",
                             body="")
    run = Session([sys.executable, "-c", "from nvllm.plugins import load_plugins; load_plugins()"], tmp_path,
                  env={"PYTHONPATH": f"{fault_site}:{site}"}).finish(120)
    clean(run, 60)
    assert run.returncode != 0
    assert "two nvllm plugins use the entry-point name 'faults': nvllm-" in run.stderr
    assert "nvllm-faults (entry point" in run.stderr and "nvllm-other (entry point" in run.stderr


def test_broken_plugin_is_skipped_unless_asked_for(tmp_path, fault_site, tiny_qwen3_path):
    broken = make_distribution(tmp_path / "broken", name="nvllm-broken", module="nvllm_broken", ep_name="broken",
                               body="import no_such_module_xyz\n")
    env = {"PYTHONPATH": f"{fault_site}:{broken}"}
    run = cli(tmp_path, "--help", env=env).finish(120)
    clean(run, 60)
    assert run.returncode == 0 and "fault_sdpa" in run.stdout  # the other plugin still loads
    assert run.stderr.count("nvllm: warning: plugin nvllm-broken (entry point 'broken' = nvllm_broken) failed to "
                            "import: ModuleNotFoundError") == 1
    run = cli(tmp_path, "attention=broken_attention", env=env).finish(120)
    clean(run, 60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert ("nvllm: attention=broken_attention: no attention of that name is available. The plugin nvllm-broken "
            "(entry point 'broken' = nvllm_broken) failed to import: ModuleNotFoundError") in run.stderr
    run = script(tmp_path, f"""
        from nvllm import LLM
        try:
            LLM({tiny_qwen3_path!r}, scheduler="broken_policy")
        except Exception as e:
            print("ERROR", type(e).__name__, e)
    """, env=env).finish(120)
    clean(run, 60)
    assert "ERROR UnknownComponentError scheduler=broken_policy: no scheduler of that name" in run.stdout
    assert "nvllm-broken (entry point 'broken' = nvllm_broken) failed to import" in run.stdout


def test_plugin_raising_in_its_register_hook_is_skipped(tmp_path, fault_site):
    raising = make_distribution(tmp_path / "raising", name="nvllm-raising", module="nvllm_raising", ep_name="raising",
                                body="from nvllm import hookimpl\n@hookimpl\ndef register_samplers(register):\n"
                                     "    raise RuntimeError('boom')\n")
    run = cli(tmp_path, "--help", env={"PYTHONPATH": f"{fault_site}:{raising}"}).finish(120)
    clean(run, 60)
    assert run.returncode == 0 and "fault_sdpa" in run.stdout
    assert "plugin nvllm-raising (entry point 'raising' = nvllm_raising) raised in register_samplers: " \
           "RuntimeError('boom'); skipped" in run.stderr


# -- weights and inputs: errors that name the file, the weight or the line --------------------
def _copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_names_the_file(tmp_path, tiny_qwen3_path):
    bad = _copy_checkpoint(tiny_qwen3_path, tmp_path / "ckpt")
    weights = bad / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    run = cli(tmp_path, "model=qwen3", f"model.path={bad}", "workload=random_tiny").finish(120)
    clean(run, 60)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"nvllm: {weights} is not a readable safetensors file" in run.stderr
    assert "truncated" in run.stderr and "Download or copy it again" in run.stderr


def test_config_and_weights_that_disagree_name_the_weight(tmp_path, tiny_qwen3_path):
    bad = _copy_checkpoint(tiny_qwen3_path, tmp_path / "ckpt")
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] //= 2
    (bad / "config.json").write_text(json.dumps(config))
    from nvllm import LLM
    from nvllm.models.weights import WeightsError

    with pytest.raises(WeightsError, match=rf"{bad}/model.safetensors: weight 'model.layers.0.mlp.\w+.weight' has "
                                           rf"shape \(\d+, \d+\), but config.json .* has shape \(\d+, \d+\)"):
        LLM(str(bad))


def test_prompts_file_that_is_not_utf8_names_path_and_line(tmp_path, tiny_qwen3_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("first\nsecond caf\xe9\n".encode("latin-1"))
    run = cli(tmp_path, "model=qwen3", f"model.path={tiny_qwen3_path}", "workload=file", f"workload.path={prompts}",
              "workload.chat=false").finish(120)
    clean(run, 60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"nvllm: workload.path='{prompts}' is not UTF-8 text: line 2 has the byte b'\\xe9'" in run.stderr


def test_missing_prompts_file(tmp_path, tiny_qwen3_path):
    run = cli(tmp_path, "model=qwen3", f"model.path={tiny_qwen3_path}", "workload=file",
              f"workload.path={tmp_path}/nope.txt").finish(120)
    clean(run, 60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"nvllm: workload.path='{tmp_path}/nope.txt': no such file" in run.stderr


def test_huge_prompt_line_is_rejected_with_its_reason(tmp_path, smollm2_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi.\n" + "word " * 20_000 + "\n")
    run = cli(tmp_path, f"workload.path={prompts}", "workload=file", "sampling.max_tokens=4", "max_model_len=512").finish(180)
    clean(run, 120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ">>> None" not in run.stdout
    assert ">>> word word" in run.stdout and "...[100000 characters]..." in run.stdout
    assert "[rejected: prompt has 20" in run.stdout and "max_model_len=512 leaves no room" in run.stdout
    assert "1 rejected:\n  request 1: prompt has 20" in run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["rejected"] == 1 and metrics["completed"] == 1
    assert metrics["rejected_by_reason"] == {"prompt has N tokens; max_model_len=N leaves no room to generate": 1}


def test_cache_too_small_for_any_request_says_why(tmp_path, tiny_qwen3_path):
    run = cli(tmp_path, "model=qwen3", f"model.path={tiny_qwen3_path}", "workload=random", "workload.num_seqs=5",
              "workload.input_len=[20,30]", "workload.output_len=[8,8]", "workload.max_token_id=500",
              "kv_cache.block_size=8", "kv_cache.num_blocks=2").finish(120)
    clean(run, 60)
    assert run.returncode == 0
    assert "5 rejected:\n  request 0: request needs" in run.stderr and "more: see rejected_by_reason" in run.stderr  # a warning
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["rejected_by_reason"] == {
        "request needs N KV blocks (N tokens) but the whole cache has N; raise kv_cache.num_blocks or "
        "kv_cache.memory_budget_gb, or lower max_tokens": 5}


def test_generate_after_close_says_the_engine_is_closed(tiny_qwen3_path):
    from nvllm import LLM

    llm = LLM(tiny_qwen3_path)
    llm.close()
    with pytest.raises(RuntimeError, match="the engine is closed"):
        llm.generate([[1, 2, 3]])
    engine = LLM(tiny_qwen3_path).engine
    engine.close()
    with pytest.raises(RuntimeError, match="the engine is closed"):
        engine.generate([[1, 2, 3]], [None])


@pytest.mark.parametrize("override, key", [
    ("tp=1.5", "tp"),
    pytest.param("compile=maybe", "compile", marks=pytest.mark.slow),
    pytest.param("sampling.max_tokens=abc", "sampling.max_tokens", marks=pytest.mark.slow),
])
def test_mistyped_switch_names_the_key(tmp_path, override, key):
    """The typed schema (issue 12) refuses it at composition, before anything is built."""
    run = cli(tmp_path, override).finish(120)
    clean(run, 60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"full_key: {key}" in run.stderr and override.split("=")[1] in run.stderr
