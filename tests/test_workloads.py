"""Open-loop arrivals (seeded gamma gaps, as vLLM draws them), max_concurrency, traces, and the
refusal of every bad value naming the key, the value and what is allowed."""
import json
import math
import re
import statistics

import pytest
from omegaconf import OmegaConf

from nvllm.errors import ConfigError
from nvllm.workloads import WorkloadError, arrival_offsets, build_requests, max_concurrency

SAMPLING = OmegaConf.create({"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_tokens": 8, "ignore_eos": True,
                             "seed": None})


@pytest.fixture(autouse=True, scope="module")
def _workloads_registered():
    """build_requests finds a workload by name in the registry, which the plugins fill."""
    from nvllm.plugins import load_plugins

    load_plugins()


def workload(**fields):
    base = {"name": "random", "num_seqs": 4, "input_len": [3, 9], "output_len": [2, 5], "max_token_id": 100,
            "seed": 0, "ignore_eos": True, "request_rate": math.inf, "burstiness": 1.0, "max_concurrency": None}
    return OmegaConf.create({**base, **fields})


def test_inf_rate_is_all_at_once():
    assert arrival_offsets(workload(), 10) is None
    assert arrival_offsets(workload(request_rate="inf"), 10) is None


@pytest.mark.parametrize("rate, burstiness", [(4.0, 1.0), (4.0, 0.5), (20.0, 3.0)])
def test_gaps_follow_the_seeded_gamma_process(rate, burstiness):
    n = 20001
    offsets = arrival_offsets(workload(request_rate=rate, burstiness=burstiness), n)
    assert offsets[0] == 0 and len(offsets) == n
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    # Gamma(shape=b, scale=1/(rate*b)): mean 1/rate, variance 1/(rate^2 b)
    mean, var = 1 / rate, 1 / (rate ** 2 * burstiness)
    assert abs(statistics.fmean(gaps) - mean) < 5 * math.sqrt(var / len(gaps))
    assert statistics.variance(gaps) == pytest.approx(var, rel=0.1)
    if burstiness == 1.0:  # Poisson: a Kolmogorov-Smirnov test against the exponential CDF
        gaps.sort()
        d = max(max((i + 1) / len(gaps) - (1 - math.exp(-rate * g)), (1 - math.exp(-rate * g)) - i / len(gaps))
                for i, g in enumerate(gaps))
        assert d < 1.95 / math.sqrt(len(gaps))  # the 0.1% critical value


def test_arrivals_are_seeded_and_leave_the_prompts_alone():
    a = arrival_offsets(workload(request_rate=2), 50)
    assert a == arrival_offsets(workload(request_rate=2), 50)
    assert a != arrival_offsets(workload(request_rate=2, seed=1), 50)
    assert build_requests(workload(request_rate=2), SAMPLING, None)[0] == build_requests(workload(), SAMPLING, None)[0]


@pytest.mark.parametrize("fields, message", [
    ({"request_rate": 0}, "workload.request_rate must be a number > 0, or inf (all at once), got 0"),
    ({"request_rate": -2.5}, "workload.request_rate must be a number > 0, or inf (all at once), got -2.5"),
    ({"request_rate": "fast"}, "workload.request_rate must be a number > 0, or inf (all at once), got 'fast'"),
    ({"burstiness": 0}, "workload.burstiness must be a number > 0 (1 = Poisson; < 1 burstier), got 0"),
    ({"burstiness": math.inf}, "workload.burstiness must be a number > 0 (1 = Poisson; < 1 burstier), got inf"),
])
def test_bad_arrival_fields_refused(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        arrival_offsets(workload(**fields), 4)


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_bad_max_concurrency_refused(value):
    with pytest.raises(ConfigError, match=f"workload.max_concurrency must be null \\(no cap\\) or an integer >= 1, got {value!r}"):
        max_concurrency(workload(max_concurrency=value))
    assert max_concurrency(workload(max_concurrency=3)) == 3 and max_concurrency(workload()) is None


def trace_workload(path, **fields):
    return OmegaConf.create({"name": "trace", "path": str(path), "time_scale": 1.0, "max_concurrency": None,
                             "max_token_id": 100, "seed": 0, "ignore_eos": True, **fields})


def test_trace_replay(tmp_path):
    path = tmp_path / "trace.jsonl"
    lines = [{"arrival": 10.0, "input_len": 5, "output_len": 3}, {"arrival": 10.5, "prompt": "hi there", "output_len": 2},
             {"arrival": 12.0, "input_len": 2, "output_len": 7}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert arrival_offsets(trace_workload(path), 3) == [0.0, 0.5, 2.0]
    assert arrival_offsets(trace_workload(path, time_scale=0.5), 3) == [0.0, 0.25, 1.0]
    prompts, params = build_requests(trace_workload(path), SAMPLING, None)
    assert [len(prompts[0]), prompts[1], len(prompts[2])] == [5, "hi there", 2]
    assert [p.max_tokens for p in params] == [3, 2, 7] and all(p.ignore_eos for p in params)


def test_bad_traces_refused(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"arrival": 1, "output_len": 3}\n')
    with pytest.raises(ValueError, match="trace.jsonl:1: a trace line needs arrival .*, output_len and input_len or prompt"):
        arrival_offsets(trace_workload(path), 1)
    path.write_text('{"arrival": 2, "input_len": 1, "output_len": 3}\n{"arrival": 1, "input_len": 1, "output_len": 3}\n')
    with pytest.raises(ValueError, match="arrival times must not decrease"):
        arrival_offsets(trace_workload(path), 2)
    with pytest.raises(ConfigError, match="workload.time_scale must be a number > 0 .*, got 0"):
        arrival_offsets(trace_workload(path, time_scale=0), 2)
    with pytest.raises(ValueError, match="no such file"):
        arrival_offsets(trace_workload(tmp_path / "missing.jsonl"), 2)


def test_sharegpt_like_lengths():
    """lengths: sharegpt draws lognormal lengths around the documented medians, clipped to the ranges,
    seeded; lengths: uniform (the default) draws what it always drew."""
    from nvllm.workloads import SHAREGPT_LIKE

    wl = workload(num_seqs=2000, lengths="sharegpt", input_len=[4, 1024], output_len=[4, 2048])
    prompts, params = build_requests(wl, SAMPLING, None)
    inputs, outputs = [len(p) for p in prompts], [p.max_tokens for p in params]
    assert min(inputs) >= 4 and max(inputs) <= 1024 and max(inputs) == 1024  # the tail is clipped
    assert statistics.median(inputs) == pytest.approx(SHAREGPT_LIKE["input"][0], rel=0.1)
    assert statistics.median(outputs) == pytest.approx(SHAREGPT_LIKE["output"][0], rel=0.1)
    assert statistics.mean(outputs) > 1.3 * statistics.median(outputs)  # a long right tail
    assert build_requests(wl, SAMPLING, None)[0] == prompts
    assert build_requests(workload(lengths="uniform"), SAMPLING, None) == build_requests(workload(), SAMPLING, None)
    with pytest.raises(WorkloadError, match="workload.lengths=.zipf. is not allowed"):
        build_requests(workload(lengths="zipf"), SAMPLING, None)
