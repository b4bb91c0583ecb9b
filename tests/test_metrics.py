"""serving_metrics on a hand-computed example: vLLM bench serve's definitions and names."""
import pytest

from nvllm.errors import ConfigError
from nvllm.metrics import RequestTiming, serving_metrics, serving_options, summary_line

A = RequestTiming(arrival=0.0, token_times=[1.0, 1.5, 2.5], input_len=10, output_len=3, first_scheduled=0.5,
                  preemptions=1)
B = RequestTiming(arrival=1.0, token_times=[1.2], input_len=4, output_len=1, first_scheduled=1.0)
C = RequestTiming(arrival=2.0, success=False, error="rejected: empty prompt")
TIMINGS = [A, B, C]


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-9)


def test_counts_and_throughputs():
    m = serving_metrics(TIMINGS, duration=4.0, request_rate=1.5)
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["total_input_tokens"] == 14 and m["total_output_tokens"] == 4
    assert m["request_throughput"] == approx(0.5)
    assert m["output_throughput"] == approx(1.0)
    assert m["total_token_throughput"] == approx(4.5)
    assert m["request_rate"] == 1.5
    assert m["achieved_request_rate"] == approx(1.0)  # 2 gaps over the 2 s the arrivals span
    assert m["request_goodput"] is None  # no SLO given
    # vLLM's per-second buckets: A is active in seconds 0-2, B in second 1
    assert m["max_concurrent_requests"] == 2


def test_latency_statistics():
    m = serving_metrics(TIMINGS, duration=4.0)
    # TTFT: A 1.0 s, B 0.2 s
    assert m["mean_ttft_ms"] == approx(600) and m["median_ttft_ms"] == approx(600)
    assert m["std_ttft_ms"] == approx(400)  # population std, as numpy
    assert m["p50_ttft_ms"] == approx(600)
    assert m["p90_ttft_ms"] == approx(920)  # linear interpolation: 200 + 0.9 * 800
    assert m["p99_ttft_ms"] == approx(992)
    # TPOT per request of more than one token: A (2.5 - 1.0) / 2
    assert m["mean_tpot_ms"] == approx(750) and m["std_tpot_ms"] == approx(0) and m["p99_tpot_ms"] == approx(750)
    # ITL: every gap, pooled: 0.5 and 1.0
    assert m["mean_itl_ms"] == approx(750) and m["median_itl_ms"] == approx(750)
    assert m["p90_itl_ms"] == approx(950) and m["std_itl_ms"] == approx(250)
    # E2EL: A 2.5, B 0.2
    assert m["mean_e2el_ms"] == approx(1350) and m["p99_e2el_ms"] == approx(200 + 0.99 * 2300)
    # queue wait: A 0.5, B 0; preemptions per request, failed ones included
    assert m["mean_queue_wait_ms"] == approx(250) and m["p99_queue_wait_ms"] == approx(495)
    assert m["preemptions_per_request"] == [1, 0, 0]


@pytest.mark.parametrize("slo, good", [
    ({"ttft_ms": 500}, 1),  # B only
    ({"tpot_ms": 100}, 1),  # B: one token, TPOT counts as 0
    ({"e2el_ms": 3000}, 2),
    ({"ttft_ms": 1000, "tpot_ms": 750}, 2),  # bounds are inclusive
    ({"ttft_ms": 1000, "tpot_ms": 749}, 1),
    ({"ttft_ms": 100}, 0),
])
def test_goodput(slo, good):
    assert serving_metrics(TIMINGS, duration=4.0, slo=slo)["request_goodput"] == approx(good / 4)


def test_percentiles_and_detailed():
    m = serving_metrics(TIMINGS, duration=4.0, percentiles=[25, 99.9], detailed=True)
    assert m["p25_ttft_ms"] == approx(400) and m["p99.9_ttft_ms"] == approx(200 + 0.999 * 800)
    assert "p90_ttft_ms" not in m
    assert m["ttfts"] == approx([1.0, 0.2]) and m["latencies"] == approx([2.5, 0.2])
    assert m["itls"] == [approx([0.5, 1.0]), []]
    assert m["start_times"] == [0.0, 1.0] and m["input_lens"] == [10, 4] and m["output_lens"] == [3, 1]


def test_nothing_completed():
    m = serving_metrics([C], duration=1.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["mean_ttft_ms"] == 0 and m["p99_itl_ms"] == 0
    assert m["achieved_request_rate"] is None  # one arrival: no rate


def test_summary_line_gives_the_acceptance_when_a_drafter_ran():
    m = {"status": "ok", "requests": 2, "rejected": 0, "spec_decode": None,
         **serving_metrics([A, B], duration=4.0)}
    assert "acceptance" not in summary_line(m) and "drafted" not in summary_line(m)  # speculative=none
    # metrics.json's spec_decode: 5 drafts of 4 tokens, 12 accepted
    spec = {"num_drafts": 5, "num_draft_tokens": 20, "num_accepted_tokens": 12, "draft_acceptance_rate": 0.6,
            "mean_acceptance_length": 3.4}
    line = summary_line({**m, "spec_decode": spec})
    assert line.endswith(", draft acceptance 60% (mean acceptance length 3.40)"), line
    idle = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0, "draft_acceptance_rate": None,
            "mean_acceptance_length": None}  # a drafter that never drafted (disable_by_batch_size)
    assert summary_line({**m, "spec_decode": idle}).endswith(", nothing drafted")


@pytest.mark.parametrize("cfg, match", [
    ({"metrics": {"percentiles": [50, 101]}}, r"metrics.percentiles must be a list of numbers in \(0, 100\], got \[50, 101\]"),
    ({"metrics": {"detailed": "yes"}}, "metrics.detailed must be true or false, got 'yes'"),
    ({"slo": {"ttft_ms": -5}}, "slo.ttft_ms must be null .* > 0, got -5"),
    ({"slo": {"ttfb_ms": 5}}, "slo.ttfb_ms is not an SLO; the SLOs are slo.ttft_ms, slo.tpot_ms, slo.e2el_ms"),
])
def test_bad_options_refused(cfg, match):
    with pytest.raises(ConfigError, match=match):
        serving_options(cfg)


def test_options():
    assert serving_options({"metrics": {"percentiles": [50, 99], "detailed": True},
                            "slo": {"ttft_ms": 200, "tpot_ms": None, "e2el_ms": None}}) == \
        {"percentiles": [50, 99], "detailed": True, "slo": {"ttft_ms": 200}}


def test_an_offline_batch_has_no_request_rate():
    """All at once: the arrivals' spread is the time to queue them, not a rate (it read 34,000 req/s)."""
    batch = [RequestTiming(arrival=i * 1e-5, token_times=[1.0], input_len=4, output_len=1) for i in range(8)]
    m = serving_metrics(batch, duration=1.0)
    assert m["request_rate"] is None and m["achieved_request_rate"] is None
    assert m["request_throughput"] == approx(8)  # completed per second still holds
    traced = serving_metrics(TIMINGS, duration=4.0, open_loop=True)  # a trace: arrivals over time, no configured rate
    assert traced["request_rate"] is None and traced["achieved_request_rate"] == approx(1.0)


def test_metrics_json_is_strict_json():
    import json
    import math

    from nvllm.metrics import to_json

    text = to_json({"requested_config": {"workload": {"request_rate": math.inf, "burstiness": 1.0}},
                    "values": [1.0, math.nan], "nested": ({"x": -math.inf},)})

    def refuse(constant):
        raise ValueError(constant)
    assert json.loads(text, parse_constant=refuse) == {
        "requested_config": {"workload": {"request_rate": None, "burstiness": 1.0}},
        "values": [1.0, None], "nested": [{"x": None}]}
