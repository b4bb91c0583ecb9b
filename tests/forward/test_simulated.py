"""forward=simulated: the virtual clock orders events exactly (a hand-computed schedule under a
constant-cost model), the cost models (profile fit, roofline) and the KV cache sized from the
simulated device's memory, the refusals, model shapes without weights, and the labels a simulated
run carries. Block accounting against a real run is the ForwardSuite's (tests/test_conformance.py)."""
import json
import math

import pytest
from transformers import AutoConfig

from nvllm import LLM, SamplingParams
from nvllm.clock import VirtualClock
from nvllm.step import StepPlan
from nvllm.errors import ConfigError
from nvllm.models.weights import MissingWeightsError, shape_path
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams as SP
from nvllm.sequence import Sequence
from nvllm.simulation.cost import HOST_SEQ_S, HOST_STEP_S, TERMS, ProfileCost, ModelDims, RooflineCost, StepShape
from nvllm.simulation.hardware import hardware

load_plugins()
TINY = {"name": "llama", "shape": "tiny"}  # the llama architecture's tiny preset: a config.json, no weights


def tiny_dims() -> ModelDims:
    return ModelDims.of(AutoConfig.from_pretrained(shape_path("llama", "tiny")))


def write_profile(path, dims: ModelDims, **coefficients) -> str:
    """A profile as nvllm.tools.profile writes it, with the given coefficients (the others 0)."""
    profile = {"nvllm_profile": 1, "hardware": {"name": "cpu", "kind": "cpu", "memory_gib": 16.0},
               "model": {"name": "llama", "dims": dims.as_dict()}, "dtype": "float32", "tp": 1,
               "forward": "fused_cpu", "attention": "cpu", "coefficients_s": {t: coefficients.get(t, 0.0) for t in TERMS}}
    path.write_text(json.dumps(profile))
    return str(path)


def simulated(profile=None, **overrides) -> LLM:
    forward = {"name": "simulated", **({"profile": profile} if profile else {})}
    return LLM(TINY, forward=forward, **{"kv_cache": {"block_size": 8}, "max_model_len": 128, **overrides})


def test_virtual_clock():
    clock = VirtualClock()
    assert clock.now() == 0.0 and clock.simulated
    clock.advance(0.5)
    clock.sleep_until(0.25)  # the past: no jump back
    assert clock.now() == 0.5
    clock.sleep_until(2.0)
    assert clock.now() == 2.0
    with pytest.raises(AssertionError):
        clock.advance(-1)


@pytest.mark.parametrize("scheduler, times", [
    # fcfs runs prefills first: C's prefill at 0.5 holds A's decode back a step (A's ITLs 0.25, 0.5)
    ("fcfs", {"A": [0.25, 0.5, 1.0], "B": [0.25, 0.5], "C": [0.75, 1.0]}),
    # chunked runs A's decode beside C's prefill in the step at 0.5
    ("chunked", {"A": [0.25, 0.5, 0.75], "B": [0.25, 0.5], "C": [0.75, 1.0]}),
])
def test_the_virtual_clock_orders_events_exactly(tmp_path, scheduler, times):
    """Every step costs 0.25 s. A (3 tokens) and B (2) arrive at 0, C (2) at 0.375, mid-step: it joins
    at the step starting 0.5. Hand-computed token times, TTFTs and ITLs, exactly."""
    profile = write_profile(tmp_path / "constant.json", tiny_dims(), step=0.25)
    arrivals = {"A": 0.0, "B": 0.0, "C": 0.375}
    lengths = {"A": 3, "B": 2, "C": 2}
    with simulated(profile, scheduler=scheduler) as llm:
        outputs = llm.generate([[1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]],
                               [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths.values()],
                               arrival_times=list(arrivals.values()), use_tqdm=False)
        assert llm.engine.clock.now() == 1.0
    for out, name in zip(outputs, times):
        assert out.metrics.arrival_time == arrivals[name] and out.outputs[0].token_times == times[name], name
        assert out.metrics.ttft == times[name][0] - arrivals[name]
    assert outputs[2].metrics.ttft == 0.375 and outputs[2].metrics.first_scheduled_time == 0.5


def test_step_shape_of_a_batch():
    seqs, steps = [], ((0, 5, 5), (8, 4, 12), (20, 1, 21), (3, 1, 4))
    for computed, _, total in steps:
        seq = Sequence(list(range(total)), SP(), 8)
        seq.num_computed_tokens = computed
        seqs.append(seq)
    shape = StepShape.of(StepPlan.of(seqs, [scheduled for _, scheduled, _ in steps]))
    # prefill pairs: 5 tokens from 0 (1+2+3+4+5) and 4 tokens after 8 cached (9+10+11+12)
    assert (shape.prefill_seqs, shape.prefill_tokens, shape.prefill_attention, shape.prefill_kv) == (2, 9, 15 + 42, 17)
    assert (shape.decode_seqs, shape.decode_kv) == (2, 21 + 4)
    assert shape == StepShape.synthetic([(0, 5), (8, 4)], [20, 3])


def test_the_fit_recovers_the_profile_model():
    """Steps timed from known coefficients — matmuls memory-bound below 8 tokens a step — give them back."""
    truth = dict(step=2e-3, weights=8 * 3e-4, token=3e-4, prefill_attention=1e-8, decode_seq=5e-5, decode_kv=2e-7)
    shapes = [StepShape.synthetic([(c, q)], []) for q in (8, 64, 512) for c in (0, 256)]
    shapes += [StepShape.synthetic([], [c] * b) for b in (1, 2, 4, 8, 16, 64) for c in (16, 1024)]
    shapes += [StepShape.synthetic([(0, 32)], [100] * 4)]
    model, fit = ProfileCost.fit(shapes, [ProfileCost(truth).step_seconds(s) for s in shapes])
    assert model.coefficients == pytest.approx(truth, rel=1e-6)
    assert fit["max_abs_rel_error"] < 1e-9 and fit["ridge_tokens"] == 8
    one = ProfileCost(truth).step_seconds(StepShape.synthetic([], [16]))  # below the ridge: the weights' time
    assert one == pytest.approx(2e-3 + 8 * 3e-4 + 5e-5 + 2e-7 * 17)
    # a term that can only hurt is dropped, not given a negative coefficient
    model, _ = ProfileCost.fit(shapes, [2e-3 + 3e-4 * s.decode_seqs + 1e-5 * s.prefill_tokens * (s.prefill_kv < 256)
                                        for s in shapes])
    assert all(v >= 0 for v in model.coefficients.values())


def test_roofline_terms():
    dims = ModelDims.of(AutoConfig.from_pretrained(shape_path("qwen3", "qwen3-32b")))
    assert 32e9 < dims.params < 33.5e9  # Qwen3-32B: 32.8 billion
    h200 = hardware("h200")
    one, eight = RooflineCost(dims, h200, "bfloat16", 1), RooflineCost(dims, h200, "bfloat16", 8)
    decode = StepShape.synthetic([], [1000])
    weights_read = dims.params * 2 / (h200.memory_bandwidth * h200.bandwidth_efficiency)
    host = HOST_STEP_S + HOST_SEQ_S  # nvllm's host side of a step of one sequence
    assert one.step_seconds(decode) == pytest.approx(weights_read + dims.kv_bytes_per_token(2) * 1001
                                                     / (h200.memory_bandwidth * h200.bandwidth_efficiency) + host, rel=1e-9)
    prefill = StepShape.synthetic([(0, 8192)], [])  # compute-bound
    assert one.step_seconds(prefill) > 2 * weights_read
    assert eight.step_seconds(prefill) < one.step_seconds(prefill) / 4  # tp shards the FLOPs; all-reduces cost some
    assert eight.step_seconds(decode) > one.step_seconds(decode) / 8  # the all-reduce latencies of 129 per step
    with pytest.raises(ConfigError, match="no matmul rate for bfloat16"):
        RooflineCost(dims, hardware("cpu"), "bfloat16")


def test_kv_cache_sized_from_the_device_memory():
    """H200 memory x gpu_memory_utilization, less the weights and the activations of the largest
    step per rank, over a block's bytes per rank; capped by max_num_seqs full-length sequences."""
    model = {"name": "qwen3", "shape": "qwen3-32b"}
    dims = ModelDims.of(AutoConfig.from_pretrained(shape_path("qwen3", "qwen3-32b")))
    blocks = {}
    for tp in (2, 4):
        with LLM(model, forward={"name": "simulated", "hardware": "h200"}, tp=tp, max_num_seqs=4096,
                 max_num_batched_tokens=8192, max_model_len=4096) as llm:
            blocks[tp] = llm.engine.kv_cache.num_blocks
        budget = (140.4 * 2**30 * 0.9 - dims.params * 2 / tp - dims.activation_bytes(8192, 4096, 2, tp))
        assert blocks[tp] == int(budget // (dims.kv_bytes_per_token(2, tp) * 256))
    assert blocks[4] > 2 * blocks[2]
    with LLM(model, forward={"name": "simulated", "hardware": "h200"}, tp=8) as llm:
        assert llm.engine.kv_cache.num_blocks == 512 * 16  # 512 sequences of 4096 tokens
    with pytest.raises(MemoryError, match="leaves no KV cache block"):
        LLM({"name": "llama", "shape": "llama-3-70b"}, forward={"name": "simulated", "hardware": "h100"})


@pytest.mark.parametrize("forward, overrides, error", [
    ({"hardware": "tpu"}, {}, "forward.hardware='tpu' is not in the hardware table"),
    ({"hardware": "cpu"}, {"tp": 2}, "has no link; simulate a GPU entry"),
    ({"strategy": "cudagraph"}, {}, "forward.strategy=cudagraph needs a profile of it"),
    ({"profile": "/nonexistent.json"}, {}, "no such file; write one with python -m nvllm.tools.profile"),
    ({"dtype": "int8"}, {}, "forward.dtype='int8' is not allowed"),
])
def test_refusals(forward, overrides, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(".", r"\.")):
        LLM(TINY, forward={"name": "simulated", **forward}, **overrides)


def test_a_profile_measured_elsewhere_is_refused(tmp_path):
    profile = write_profile(tmp_path / "p.json", tiny_dims(), step=0.25)
    cases = [({"profile": profile, "strategy": "eager"}, {}, "forward.strategy=eager but forward.profile"),
             ({"profile": profile, "hardware": "h200"}, {}, "measured with hardware cpu"),
             ({"profile": profile}, {"attention": "sdpa"}, "attention=sdpa but forward.profile"),
             ({"profile": profile}, {"model": {"name": "qwen3", "shape": "qwen3-0.6b"}}, "another model shape")]
    for forward, overrides, error in cases:
        with pytest.raises(ConfigError, match=error):
            LLM(overrides.pop("model", TINY), forward={"name": "simulated", **forward}, **overrides)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="is not an nvllm profile"):
        LLM(TINY, forward={"name": "simulated", "profile": str(bad)})
    with pytest.raises(ConfigError, match="measured at tp=1"):
        LLM({"name": "qwen3", "shape": "qwen3-8b"}, forward={"name": "simulated", "profile": profile}, tp=2)


def test_model_shapes():
    with pytest.raises(MissingWeightsError, match="model.shape='qwen3-8b' is not a shape of model=llama"):
        LLM({"name": "llama", "shape": "qwen3-8b"}, forward="simulated")
    # a real forward pass runs a shape with random weights drawn in place
    with LLM(TINY, max_model_len=64) as llm:
        assert llm.engine.random_weights
        out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 4


def test_roofline_run_is_labelled_uncalibrated(capsys):
    """The metrics of a run say it is simulated, by what, uncalibrated; times are simulated seconds."""
    from nvllm.metrics import simulation, summary_line

    with simulated() as llm:
        outs = llm.generate([[1, 2, 3]] * 3, SamplingParams(temperature=0.7, max_tokens=5, ignore_eos=True), use_tqdm=False)
        sim = simulation(llm.engine)
    assert sim["simulated"] and sim["simulation"]["cost_model"] == "roofline" and not sim["simulation"]["calibrated"]
    assert sim["simulation"]["hardware"] == "cpu" and sim["simulation"]["measured_error"] is None
    assert sim["simulation"]["steps"] == 5 and all(len(o.outputs[0].token_ids) == 5 for o in outs)
    line = summary_line({"status": "ok", "requests": 3, "rejected": 0, "completed": 3, "total_input_tokens": 9,
                         "total_output_tokens": 15, "duration": 1.0, "output_throughput": 15.0, "median_ttft_ms": 10.0,
                         "median_tpot_ms": 5.0, **sim})
    assert line.startswith("SIMULATED, UNCALIBRATED (roofline of cpu): 3 requests") and "(simulated time;" in line
    assert math.isfinite(outs[0].metrics.ttft) and outs[0].metrics.ttft > 0


PLUGIN = '''
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.forward.simulated import SimulatedForward
from nvllm.simulation.cost import CostModel


class FittedElsewhere(CostModel):
    """A cost model fitted to another machine: 0.125 s a step and 0.0625 s per decoding sequence."""
    calibrated = True

    def step_seconds(self, step):
        return 0.125 + 0.0625 * step.decode_seqs

    def describe(self):
        return {"cost_model": "fitted_elsewhere", "calibrated": True, "hardware": "another-gpu",
                "measured_error": {"median_tpot": 0.05}}


class OtherGPU(SimulatedForward):
    name = "simulated_other_gpu"

    @dataclass
    class Config(SimulatedForward.Config):
        name: str = "simulated_other_gpu"

    def cost_model(self):
        return FittedElsewhere()


@hookimpl
def register_forward_strategies(register):
    register(OtherGPU)
'''


def test_a_third_party_cost_model_registers_through_the_forward_hook(tmp_path):
    """A pip-installed package (a module and its dist-info on sys.path) adds a simulated strategy with
    its own cost model; python -m nvllm.run runs it and labels the run with it."""
    import os
    import subprocess
    import sys

    from tests.test_plugins import make_distribution

    site = make_distribution(tmp_path / "site", name="nvllm-other-gpu", module="nvllm_other_gpu", body=PLUGIN,
                             ep_name="other_gpu")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "forward=simulated_other_gpu", "model=llama",
                           "model.shape=tiny", "workload=random_tiny", "workload.num_seqs=3", "workload.max_token_id=500", "max_model_len=160",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIMULATED (fitted_elsewhere, another-gpu)" in proc.stdout
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    sim = m["simulation"]
    assert m["simulated"] and sim["cost_model"] == "fitted_elsewhere" and sim["measured_error"] == {"median_tpot": 0.05}
    assert m["effective_config"]["forward"]["name"] == "simulated_other_gpu"
    # the first token of each request comes from the one prefill step, every later one from a decode step
    decodes = m["total_output_tokens"] - m["completed"]
    assert m["duration"] == pytest.approx(0.125 * sim["steps"] + 0.0625 * decodes, abs=1e-9)


def test_a_weight_format_streams_its_bytes():
    """A memory-bound decode step (one sequence, Qwen3-8B's shape on an H200) costs the weights' bytes
    over the bandwidth: the linear layers' at the format's bytes a weight, the embeddings' in dtype."""
    dims = ModelDims.of(AutoConfig.from_pretrained(shape_path("qwen3", "qwen3-8b")))
    h200 = hardware("h200")
    bandwidth = h200.memory_bandwidth * h200.bandwidth_efficiency
    decode = StepShape.synthetic([], [16])
    kv = dims.kv_bytes_per_token(2) * 17
    host = HOST_STEP_S + HOST_SEQ_S
    seconds = {}
    for name, linear_bytes in (("bfloat16", None), ("int8", 1 + 2 / 32), ("int4", 0.5 + 4 / 32)):
        seconds[name] = RooflineCost(dims, h200, "bfloat16", linear_bytes=linear_bytes).step_seconds(decode) - host
        weights = dims.linear_params * (linear_bytes or 2) + dims.embedding_params * 2
        assert seconds[name] == pytest.approx((weights + kv) / bandwidth, rel=1e-9), name
    # the linear layers are 92 % of Qwen3-8B's weights: int8 takes 0.53 of bfloat16's time, int4 0.35
    linear_share = dims.linear_params / dims.params
    for name, ratio in (("int8", 34 / 64), ("int4", 20 / 64)):
        assert seconds[name] / seconds["bfloat16"] == pytest.approx(linear_share * ratio + 1 - linear_share, rel=1e-3)
    prefill = StepShape.synthetic([(0, 8192)], [])  # compute-bound: a weight-only format changes no FLOPs
    assert RooflineCost(dims, h200, "bfloat16", linear_bytes=0.625).step_seconds(prefill) == \
        pytest.approx(RooflineCost(dims, h200, "bfloat16").step_seconds(prefill), rel=1e-3)


@pytest.mark.parametrize("arch, shape", [("qwen3", "qwen3-8b"), ("qwen3_moe", "qwen3-30b-a3b")])
@pytest.mark.parametrize("quantization, linear_bytes", [("int8", 34 / 32), ("int4", 20 / 32)])
def test_a_simulated_run_takes_the_weight_format(quantization, linear_bytes, arch, shape):
    """forward=simulated accepts quantization=int8 and int4; a single stream's TPOT drops by the
    bytes ratio of the weights it reads (a mixture of experts: the shared ones and its token's
    experts, all in the format; the embedding and LM head at int8's bytes), and the KV cache gets
    the memory the format frees."""
    model = {"name": arch, "shape": shape}
    dims = ModelDims.of(AutoConfig.from_pretrained(shape_path(arch, shape)))
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    tpot, blocks = {}, {}
    for name in ("none", quantization):
        with LLM(model, forward={"name": "simulated", "hardware": "h200"}, quantization=name, max_model_len=256) as llm:
            out = llm.generate([[1] * 16], greedy, use_tqdm=False)[0]
            tpot[name] = out.metrics.tpot - HOST_STEP_S - HOST_SEQ_S
            blocks[name] = llm.engine.kv_cache.num_blocks
            sim = llm.engine.executor.describe()
        assert sim["quantization"] == name and sim["linear_bytes_per_weight"] == (2 if name == "none" else linear_bytes)
        assert sim["embedding_bytes_per_weight"] == (2 if name == "none" else 34 / 32)
    active = dims.active_linear_params
    expected = dims.weight_bytes(2, linear_bytes, active, 34 / 32) / dims.weight_bytes(2, 2, active)
    assert tpot[quantization] / tpot["none"] == pytest.approx(expected, rel=1e-3)  # the KV read is < 0.1 % of it
    assert blocks[quantization] >= blocks["none"]


def test_gguf_prices_the_files_blocks_and_a_profile_of_another_format_is_refused(tmp_path):
    from nvllm.models.weights import smollm2_gguf
    from nvllm.quantization.gguf import GGUF

    # the embedded SmolLM2's file: every linear tensor Q4_1, 20 bytes per 32 weights; its tied
    # embedding Q8_0, 34
    assert GGUF.bytes_per_weight(GGUF.Config(file=str(smollm2_gguf())), 4) == 20 / 32
    assert GGUF.embedding_bytes_per_weight(GGUF.Config(file=str(smollm2_gguf())), 4) == 34 / 32
    profile = write_profile(tmp_path / "p.json", tiny_dims(), step=0.25)
    with pytest.raises(ConfigError, match="quantization=int8 but forward.profile=.* was measured with quantization=none"):
        LLM(TINY, forward={"name": "simulated", "profile": profile}, quantization="int8")
