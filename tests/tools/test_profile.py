"""python -m nvllm.tools.profile: a real forward strategy timed on a grid inside the run's limits,
the fit, the profile's record of what it was measured with, and a simulated run that uses it."""
import json

import pytest

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
from nvllm.simulation.cost import TERMS, StepShape
from nvllm.tools.profile import grid, main, measure_hardware, profile

LIMITS = ["max_model_len=64", "max_num_seqs=8", "max_num_batched_tokens=128", "kv_cache.block_size=8"]


def test_grid_stays_inside_the_limits():
    steps = grid(max_num_seqs=8, max_tokens=128, max_model_len=64, capacity=40 * 8)
    assert len(steps) > 20
    kinds = {(bool(p), bool(d)) for p, d in steps}
    assert kinds == {(True, False), (False, True), (True, True)}, "prefills, decodes and mixed steps"
    for prefills, decodes in steps:
        shape = StepShape.synthetic(prefills, decodes)
        assert len(prefills) + len(decodes) <= 8 and shape.prefill_tokens + shape.decode_seqs <= 128
        assert all(start + q < 64 for start, q in prefills) and all(c < 64 for c in decodes)
        assert sum(c + 1 for c in decodes) + sum(s + q for s, q in prefills) <= 40 * 8


def test_profile_then_simulate(tmp_path, tiny_llama_path, capsys):
    out = tmp_path / "tiny.json"
    main(["model=llama", f"model.path={tiny_llama_path}", *LIMITS, "--out", str(out), "--budget-s", "30",
          "--repeats", "2"])
    assert f"profile: {out}" in capsys.readouterr().out
    p = json.loads(out.read_text())
    assert (p["forward"], p["attention"], p["dtype"], p["tp"], p["hardware"]["name"]) == ("fused_cpu", "cpu", "float32", 1, "cpu")
    assert p["model"]["dims"]["hidden"] == 64 and p["block_size"] == 8 and p["threads"] >= 1
    assert set(p["coefficients_s"]) == set(TERMS) and all(v >= 0 for v in p["coefficients_s"].values())
    assert p["fit"]["steps"] == len(p["points"]) > 20 and p["validation"] is None
    assert all(pt["seconds"] > 0 and pt["predicted"] > 0 for pt in p["points"])
    with LLM(tiny_llama_path, forward={"name": "simulated", "profile": str(out)}, max_model_len=64, max_num_seqs=8,
             max_num_batched_tokens=128, kv_cache={"block_size": 8}) as llm:
        outs = llm.generate([[1, 2, 3], [4, 5, 6, 7]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                            use_tqdm=False)
        sim = llm.engine.executor.describe()
    assert [len(o.outputs[0].token_ids) for o in outs] == [6, 6]
    assert sim["cost_model"] == "profile" and sim["calibrated"] and sim["profile"] == str(out)
    assert sim["measured_with"]["forward"] == "fused_cpu" and sim["strategy_simulated"] == "fused_cpu"
    with pytest.raises(ConfigError, match="forward.strategy=eager but forward.profile"):
        LLM(tiny_llama_path, forward={"name": "simulated", "profile": str(out), "strategy": "eager"})
    # --refit: the same measured steps, fitted again (what a change of the cost model's terms needs)
    p["coefficients_s"] = {"step": 1.0}  # an older model's terms
    p["validation"] = {"all": {"pairs": 1}}
    (tmp_path / "old.json").write_text(json.dumps(p))
    main(["--refit", str(tmp_path / "old.json"), "--out", str(tmp_path / "new.json")])
    again = json.loads((tmp_path / "new.json").read_text())
    assert set(again["coefficients_s"]) == set(TERMS) and again["validation"] is None
    assert again["points"][0]["seconds"] == p["points"][0]["seconds"] and again["refitted_from"] == str(tmp_path / "old.json")


def test_a_profile_times_a_real_forward(tiny_llama_path):
    with pytest.raises(ConfigError, match="a profile times a real forward strategy"):
        profile(["model=llama", f"model.path={tiny_llama_path}", "forward=simulated"], budget_s=1)


def test_hardware_measurement():
    m = measure_hardware(repeats=1)
    assert m["memory_read_bandwidth_bytes_s"] > 1e8 and m["float32_matmul_flops"] > 1e8 and m["threads"] >= 1
