"""`python -m nvllm.run` end to end, as a user runs it: from any directory, metrics.json written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


def nvllm_run(*overrides, cwd):
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", f"hydra.run.dir={cwd}/run", *overrides],
                          capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, strict_json((Path(cwd) / "run" / "metrics.json").read_text())


def strict_json(text: str) -> dict:
    """metrics.json as a strict JSON parser reads it: Infinity or NaN is an error (as in JavaScript)."""
    def refuse(constant):
        raise ValueError(f"metrics.json holds {constant}, which is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_default_run_answers_paris(tmp_path):
    out, metrics = nvllm_run(cwd=tmp_path)
    answer = out.split(">>> What is the capital of France?\n", 1)[1].splitlines()[0]
    assert "Paris" in answer
    assert "5 requests (0 rejected)" in out and "output tok/s" in out
    assert metrics["requests"] == 5 and metrics["total_output_tokens"] > 0
    assert metrics["effective_config"]["device"] == "cpu"
    assert metrics["effective_config"]["cudagraph"] is False  # auto resolved
    assert metrics["effective_config"]["forward"]["name"] == "fused_cpu"
    assert metrics["effective_config"]["forward_auto"].startswith("forward=auto chose fused_cpu")
    assert metrics["effective_config"]["model"]["random_weights"] is False


def test_random_workload_metrics(tmp_path, tiny_qwen3_path):
    out, m = nvllm_run(f"model.path={tiny_qwen3_path}", "model=qwen3", "workload=random", "workload.num_seqs=6",
                       "workload.input_len=[4,40]", "workload.output_len=[4,20]", "workload.max_token_id=500",
                       "kv_cache.block_size=8", "kv_cache.num_blocks=12", "max_model_len=128",
                       "max_num_batched_tokens=256", cwd=tmp_path)
    assert "RANDOM WEIGHTS" in out
    assert m["requests"] == 6 and m["rejected"] == 0
    assert 6 * 4 <= m["total_output_tokens"] <= 6 * 20
    for key in ("duration", "output_throughput", "prefill_throughput", "decode_throughput", "preemptions",
                "prefix_cache_hit_rate", "peak_memory_bytes", "versions", "device"):
        assert m[key] is not None, key
    for key in ("ttft", "tpot"):
        assert m[f"median_{key}_ms"] > 0 and m[f"p90_{key}_ms"] >= m[f"median_{key}_ms"]
    # one unit per metric, under vLLM's names: no second copy in seconds
    assert not {"ttft_s", "tpot_s", "wall_time_s", "output_tok_s", "output_tokens", "prompt_tokens"} & set(m)
    # an offline batch (every request at t=0) has no request rate, configured or achieved
    assert m["request_rate"] is None and m["achieved_request_rate"] is None
    assert m["requested_config"]["workload"]["request_rate"] is None  # inf in the config: null, not Infinity
    # start-up is timed apart: the throughput counts the generate loop only
    assert m["startup_s"]["load"] > 0 and m["startup_s"]["warmup"] > 0
    assert m["output_throughput"] == pytest.approx(m["total_output_tokens"] / m["duration"])
    assert "median TTFT" in out and "median TPOT" in out
    eff = m["effective_config"]
    assert eff["model"]["random_weights"] is True and eff["kv_cache"]["num_blocks"] == 12
    assert eff["scheduler"] == "fcfs" and eff["dtype"] == "float32"
    # attention=auto, the default: on this CPU (a C compiler, float32) the cpu kernel, and it says so
    assert eff["attention"] == "cpu" and eff["attention_auto"].startswith("attention=auto chose cpu (cpu, float32")
    assert m["versions"]["torch"] and m["versions"]["hydra-core"]


@pytest.mark.slow  # runs nvllm in fresh processes
def test_prompts_file(tmp_path, tiny_qwen3_path):
    from nvllm.models.weights import smollm2_path

    model = tmp_path / "model"
    # a tiny random llama with the SmolLM2 tokenizer, so text prompts work without the 135M model
    from nvllm.tools.checkpoint import make_random_checkpoint

    make_random_checkpoint("llama", str(model), preset="tiny", vocab_size=49152, tokenizer_from=str(smollm2_path()))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n")
    out, m = nvllm_run("model=llama", f"model.path={model}", "workload=file", f"workload.path={prompts}",
                       "workload.chat=false", "sampling.max_tokens=4", cwd=tmp_path)
    assert m["requests"] == 2 and ">>> first prompt" in out and ">>> second prompt" in out


def test_unknown_option_fails_listing_valid(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "scheduler=nope"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'scheduler/nope'" in proc.stderr and "fcfs" in proc.stderr


@pytest.mark.slow  # an open-loop run in a fresh process
def test_open_loop_run_writes_serving_metrics(tmp_path, tiny_qwen3_path):
    _, m = nvllm_run(f"model.path={tiny_qwen3_path}", "model=qwen3", "workload=random", "workload.num_seqs=5",
                     "workload.input_len=[4,20]", "workload.output_len=[3,8]", "workload.max_token_id=500",
                     "workload.request_rate=20", "workload.max_concurrency=3", "kv_cache.block_size=8",
                     "kv_cache.num_blocks=16", "max_model_len=64", "max_num_batched_tokens=256",
                     "slo.ttft_ms=60000", "metrics.percentiles=[50,99]", "metrics.detailed=true", cwd=tmp_path)
    assert m["completed"] == 5 and m["failed"] == 0 and m["request_rate"] == 20 and m["max_concurrency"] == 3
    assert m["burstiness"] == 1.0 and m["achieved_request_rate"] > 0 and m["max_concurrent_requests"] >= 1
    for stat in ("mean", "median", "std", "p50", "p99"):
        for metric in ("ttft", "tpot", "itl", "e2el", "queue_wait"):
            assert m[f"{stat}_{metric}_ms"] is not None, (stat, metric)
    assert "p90_ttft_ms" not in m and m["p99_ttft_ms"] >= m["p50_ttft_ms"] > 0
    assert m["request_goodput"] == m["completed"] / m["duration"]  # a 60 s TTFT bound: every request is good
    assert len(m["ttfts"]) == len(m["itls"]) == len(m["latencies"]) == len(m["output_lens"]) == 5
    assert sum(m["output_lens"]) == m["total_output_tokens"]
    assert len(m["preemptions_per_request"]) == 5


@pytest.mark.parametrize("override, message", [
    ("workload.request_rate=0", "workload.request_rate must be a number > 0, or inf (all at once), got 0"),
    ("workload.max_concurrency=0", "workload.max_concurrency must be null (no cap) or an integer >= 1, got 0"),
    ("slo.tpot_ms=-1", "slo.tpot_ms must be null (no bound) or a number of milliseconds > 0, got -1.0"),
])
def test_bad_serving_fields_refused(tmp_path, tiny_qwen3_path, override, message):
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", f"hydra.run.dir={tmp_path}/run", "model=qwen3",
                           f"model.path={tiny_qwen3_path}", "workload=random", override],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
