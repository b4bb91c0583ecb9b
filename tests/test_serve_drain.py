"""Graceful drain (issue 23): SIGTERM (what docker, systemd and Kubernetes send) and Ctrl-C both stop
`python -m nvllm.serve` the same way. New requests get a 503 with an OpenAI error body at once; a
request that finishes within serve.drain_timeout_s finishes normally; the rest end with an error
event and [DONE] (streams) or a 503 JSON error; the server prints one line, exits 0 and leaves no
process behind (tensor-parallel ranks and tokenizer workers included), with no traceback anywhere.
A real server process of a tiny random llama with SmolLM2's tokenizer (fast steps) and real HTTP
clients."""
import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.test_faults import default_sigint, fault_site  # noqa: F401  (fault_site: a fixture)
from tests.test_serve import Server

DRAIN_S = 8
SHORT = 24  # tokens: a request that finishes within the drain even on a loaded machine


def group_is_empty(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode != 0:
            return True
        time.sleep(0.2)
    return False


def stream_lines(url, body, into: list, started: threading.Event | None = None, after: int = 3):
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if line:
                into.append(line)
                if started is not None and len(into) >= after:
                    started.set()


@pytest.mark.slow
@pytest.mark.serial  # the short request must still be running when the signal comes: alone, not beside another worker
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_drains_the_server(tmp_path, tiny_text_path, sig):
    server = Server(tmp_path, "model=llama", f"model.path={tiny_text_path}", "max_model_len=16384",
                    f"serve.drain_timeout_s={DRAIN_S}")
    try:  # a long request takes far longer than the drain; a short one far less
        long = {"prompt": "Once upon a time", "max_tokens": 16000, "temperature": 0, "ignore_eos": True}
        short = {**long, "max_tokens": SHORT}
        streamed, short_lines, whole, late = [], [], {}, {}
        started = threading.Event()
        threads = [threading.Thread(target=stream_lines, args=(server.url, long, streamed, started)),
                   threading.Thread(target=lambda: whole.setdefault(
                       "r", httpx.post(f"{server.url}/v1/completions", json=long, timeout=120)))]
        for t in threads:
            t.start()
        assert started.wait(60), "the long stream never started"
        short_started = threading.Event()
        short_thread = threading.Thread(target=stream_lines, args=(server.url, short, short_lines, short_started, 2))
        short_thread.start()
        assert short_started.wait(60)  # the short request is running: it finishes while the server drains
        signalled = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it: to the whole group
        else:
            os.kill(server.proc.pid, signal.SIGTERM)  # as docker or systemd send it: to the server
        time.sleep(0.3)
        late["completion"] = httpx.post(f"{server.url}/v1/completions", json=short, timeout=30)
        late["health"] = httpx.get(f"{server.url}/health", timeout=30)
        assert server.proc.wait(60) == 0, server.output
        stopped_after = time.monotonic() - signalled
        for t in (*threads, short_thread):
            t.join(30)
    finally:
        server.stop()
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    for response in late.values():  # refused at once, with an OpenAI error body
        assert response.status_code == 503 and response.json()["error"]["code"] == "shutting_down", response.text
    assert short_lines[-1] == "data: [DONE]", short_lines  # finished within the drain: a normal answer
    assert "choices" in json.loads(short_lines[-2][6:]), (short_lines[-3:], server.output)
    chunks = [json.loads(line[6:]) for line in short_lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) == SHORT
    assert streamed[-1] == "data: [DONE]"  # cut after the drain: an error event, then [DONE]
    error = json.loads(streamed[-2][6:])["error"]
    assert error["code"] == "shutting_down" and f"serve.drain_timeout_s={DRAIN_S}" in error["message"], error
    assert all("choices" in json.loads(line[6:]) for line in streamed[:-2])
    body = whole["r"].json()
    assert whole["r"].status_code == 503 and body["error"]["code"] == "shutting_down", body
    assert DRAIN_S <= stopped_after < DRAIN_S + 20
    assert "Traceback" not in server.output, server.output
    after_ready = [line for line in server.output.split(" ready on ", 1)[1].splitlines()[1:]
                   if not line.startswith("request ")]  # the log's line per finished request
    assert after_ready == [f"nvllm.serve: stopped by {name}: 1 request finished while draining, 2 ended after "
                           f"serve.drain_timeout_s={DRAIN_S} s"], server.output
    assert group_is_empty(server.proc.pid), "a process of the server outlived it"


def test_an_idle_server_stops_at_once(tmp_path, tiny_text_path):
    server = Server(tmp_path, "model=llama", f"model.path={tiny_text_path}", "max_model_len=256")
    try:
        start = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(60) == 0 and time.monotonic() - start < 10
    finally:
        server.stop()
    assert server.output.rstrip().splitlines()[-1] == "nvllm.serve: stopped by SIGTERM"
    assert "Traceback" not in server.output and group_is_empty(server.proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_while_the_model_loads(tmp_path, tiny_qwen3_path, fault_site, sig):
    """Before the server listens (the engine is building, held there by a fault plugin): it stops at once,
    without waiting for the build, in one line."""
    import sys

    from tests.test_faults import Session

    session = Session([sys.executable, "-m", "nvllm.serve", "serve.port=0", "model=qwen3",
                       f"model.path={tiny_qwen3_path}", "attention=fault_sdpa"], tmp_path,
                      env={"PYTHONPATH": str(fault_site), "NVLLM_FAULT": "pause-at-build"})
    session.wait_for("FAULT paused at build")
    session.signal(sig, group=sig == signal.SIGINT)
    run = session.finish(30)
    assert not run.leftovers, run.leftovers
    assert run.returncode == 0 and run.seconds < 15, (run.seconds, run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert run.stdout.rstrip().splitlines()[-1] == f"nvllm.serve: stopped by {name} while starting", run.stdout


@pytest.mark.slow
def test_sigterm_drains_a_tensor_parallel_server(tmp_path, tiny_qwen3_path):
    server = Server(tmp_path, "model=qwen3", f"model.path={tiny_qwen3_path}", "tp=2", "max_model_len=1024",
                    "serve.drain_timeout_s=1")
    try:
        lines, started = [], threading.Event()
        body = {"prompt": [1, 2, 3], "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
        reader = threading.Thread(target=stream_lines, args=(server.url, body, lines, started))
        reader.start()
        assert started.wait(120)
        assert len(subprocess.run(["pgrep", "-g", str(server.proc.pid)], capture_output=True, text=True)
                   .stdout.split()) >= 3, "tp=2 runs a second rank (and tokenizer workers)"
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.output
        reader.join(30)
    finally:
        server.stop()
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["code"] == "shutting_down"
    assert "Traceback" not in server.output and "nvllm.serve: stopped by SIGTERM" in server.output
    assert group_is_empty(server.proc.pid)


def _rss_mib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("command, sig", [("nvllm.serve", signal.SIGTERM), ("nvllm.serve", signal.SIGINT),
                                          ("nvllm.run", signal.SIGTERM)])
def test_a_signal_stops_a_real_load_within_2_s(tmp_path, command, sig):
    """A real load, no fault plugin: Qwen3-0.6B's shape (random weights drawn tensor by tensor, 2.4 GB in
    float32, seconds of work). Once the process holds more than 1.2 GB the weights are being drawn (the
    imports alone hold about half that); the signal (Ctrl-C to the whole group, as a terminal sends it)
    then ends the process within 2 s, with its one line, no traceback and nothing left behind. The
    server used to wait for the build to end, or abort in the interpreter's teardown with the engine
    thread still running."""
    import sys

    args = [sys.executable, "-m", command, "model=qwen3", "model.shape=qwen3-0.6b", "kv_cache.num_blocks=4",
            "workload=random_tiny", "workload.max_token_id=500", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.Popen(args + (["serve.port=0"] if command == "nvllm.serve" else []), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 300
        while _rss_mib(proc.pid) < 1200 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        signalled = time.monotonic()
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
        seconds = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    line, code = ((f"nvllm.serve: stopped by {name} while starting", 0) if command == "nvllm.serve"
                  else (f"nvllm: stopped by {name}", 130 if sig == signal.SIGINT else 143))
    assert "ready on" not in out and "loaded in" not in out, f"the load ended before the signal:\n{out[-3000:]}"
    assert proc.returncode == code and out.rstrip().splitlines()[-1] == line, out[-3000:]
    assert "Traceback" not in out and "terminate called" not in out, out[-3000:]
    assert seconds < 2, f"{seconds:.1f} s from the signal to the exit"
    assert group_is_empty(proc.pid)
