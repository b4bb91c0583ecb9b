"""nvllm.tools.spec_bench on a tiny model: both engines run every request, alternating, and the
result says how their decode rates compare and that the tokens were identical."""
import json

from nvllm.tools import spec_bench


def test_paired_run(tiny_qwen3_path, tmp_path):
    out = tmp_path / "ab.json"
    tiny = ["model=qwen3", f"model.path={tiny_qwen3_path}", "workload.num_seqs=3", "workload.max_token_id=500",
            "workload.output_len=[8,16]", "max_model_len=512"]
    result = spec_bench.main(["--workload", "random_tiny", "--rounds", "2", "--out", str(out), *tiny,
                              "speculative=ngram", "speculative.num_speculative_tokens=3"])
    assert result["identical_tokens"] and len(result["per_request_speedup"]) == 3
    assert result["decode_tok_s"]["none"] > 0 and result["speedup"] > 0
    assert result["spec_decode"]["num_spec_tokens"] == 3
    assert json.loads(out.read_text())["speedup"] == result["speedup"]


def test_overrides_split():
    engine, spec = spec_bench.overrides_of(["max_model_len=512", "kv_cache.block_size=16", "speculative=draft",
                                            "speculative.num_layers=3", "model=qwen3", "model.path=/m"])
    assert engine == {"max_model_len": 512, "kv_cache": {"block_size": 16}, "model": {"name": "qwen3", "path": "/m"}}
    assert spec == {"name": "draft", "num_layers": 3}
