"""GET /metrics in Prometheus' text format, through prometheus_client, with vLLM's metric names under
an `nvllm:` prefix (vllm:time_to_first_token_seconds -> nvllm:time_to_first_token_seconds), so a
dashboard built for vLLM reads nvllm by swapping the prefix. The engine thread reports each step
(`on_step`) and each finished request (`on_finished`); histograms and counters are thread-safe.
A mixture of experts' tokens per expert per layer (moe.expert_load) are read from the model when
/metrics is scraped, not at every step: nvllm:moe_expert_tokens_total{layer, expert}."""
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

# vLLM's buckets (seconds)
LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
           80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
# the engine's finish reasons under vLLM's names (vLLM's set: stop, length, abort, error)
FINISHED_REASONS = {"stop": "stop", "length": "length", "max_model_len": "length", "abort": "abort", "error": "error"}
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class PrometheusMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        label = ["model_name"]

        def metric(kind, name, doc, *args, **kwargs):
            return kind(f"nvllm:{name}", doc, label + list(args), registry=r, **kwargs)

        self.ttft = metric(Histogram, "time_to_first_token_seconds", "Time to first token: arrival to first token.",
                           buckets=LATENCY)
        self.itl = metric(Histogram, "inter_token_latency_seconds", "Inter-token latency: the gap between two tokens.",
                          buckets=TOKEN_LATENCY)
        self.tpot = metric(Histogram, "time_per_output_token_seconds",
                           "Time per output token after the first, per finished request.", buckets=TOKEN_LATENCY)
        self.e2el = metric(Histogram, "e2e_request_latency_seconds", "End-to-end latency: arrival to last token.",
                           buckets=LATENCY)
        self.queue = metric(Histogram, "request_queue_time_seconds", "Arrival to first scheduled.", buckets=LATENCY)
        self.prompt_len = metric(Histogram, "request_prompt_tokens", "Prompt tokens per finished request.", buckets=TOKENS)
        self.output_len = metric(Histogram, "request_generation_tokens", "Generated tokens per finished request.",
                                 buckets=TOKENS)
        self.success = metric(Counter, "request_success", "Finished requests by finish reason.", "finished_reason")
        self.prompt_tokens = metric(Counter, "prompt_tokens", "Prompt tokens of the requests added.")
        self.generation_tokens = metric(Counter, "generation_tokens", "Tokens generated.")
        self.running = metric(Gauge, "num_requests_running", "Sequences the scheduler is running.")
        self.waiting = metric(Gauge, "num_requests_waiting", "Sequences waiting to be scheduled.")
        self.kv_usage = metric(Gauge, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).")
        self.prefix_queries = metric(Counter, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = metric(Counter, "prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        # speculative decoding (vLLM's vllm:spec_decode_*; they stay at 0 with speculative=none)
        self.drafts = metric(Counter, "spec_decode_num_drafts", "Drafts verified: one sequence's drafted tokens in one step.")
        self.draft_tokens = metric(Counter, "spec_decode_num_draft_tokens", "Drafted tokens verified.")
        self.accepted_tokens = metric(Counter, "spec_decode_num_accepted_tokens", "Drafted tokens the target accepted.")
        self.accepted_per_pos = metric(Counter, "spec_decode_num_accepted_tokens_per_pos",
                                       "Drafts whose token at this position was accepted.", "position")
        self.model_name = model_name
        self._expert_load = None  # the executor's expert_load, known from the first step
        r.register(self)  # collect(): the counts the model holds
        self._lookups = self._hits = 0
        self._spec = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0}
        self._spec_per_pos: list[int] = []

    def _(self, metric, *labels):
        return metric.labels(self.model_name, *labels)

    def on_step(self, engine, deltas, sequences: dict) -> None:
        """After a step: the tokens it made (TTFT for first tokens, ITL for the others), the queues,
        the KV cache. `sequences`: request id -> its completions' Sequences."""
        for delta in deltas:
            seqs = sequences.get(delta.request_id)
            if not seqs or not delta.new_token_ids or delta.index >= len(seqs):
                continue
            seq, n = seqs[delta.index], len(delta.new_token_ids)
            self._(self.generation_tokens).inc(n)
            times = seq.token_times[-n:] if len(seq.token_times) >= n else []
            previous = seq.token_times[-n - 1] if len(seq.token_times) > n else None
            for t in times:
                if previous is None:
                    self._(self.ttft).observe(t - seq.arrival_time)
                elif t > previous:  # tokens of one step (accepted drafts) share a time: one gap per chunk
                    self._(self.itl).observe(t - previous)
                previous = t
        self._expert_load = engine.executor.expert_load
        scheduler, kv = engine.scheduler, engine.kv_cache
        self._(self.running).set(len(scheduler.running))
        self._(self.waiting).set(len(scheduler.waiting))
        self._(self.kv_usage).set(1 - kv.num_free_blocks / kv.num_blocks if kv.num_blocks else 0.0)
        self._(self.prefix_queries).inc(kv.num_lookup_tokens - self._lookups)
        self._(self.prefix_hits).inc(kv.num_hit_tokens - self._hits)
        self._lookups, self._hits = kv.num_lookup_tokens, kv.num_hit_tokens
        spec = engine.stats.spec_decode
        if spec is not None:
            for key, counter in (("num_drafts", self.drafts), ("num_draft_tokens", self.draft_tokens),
                                 ("num_accepted_tokens", self.accepted_tokens)):
                self._(counter).inc(getattr(spec, key) - self._spec[key])
                self._spec[key] = getattr(spec, key)
            per_pos = spec.num_accepted_tokens_per_pos
            self._spec_per_pos += [0] * (len(per_pos) - len(self._spec_per_pos))
            for pos, n in enumerate(per_pos):
                self._(self.accepted_per_pos, str(pos)).inc(n - self._spec_per_pos[pos])
                self._spec_per_pos[pos] = n

    def on_added(self, num_prompt_tokens: int) -> None:
        self._(self.prompt_tokens).inc(num_prompt_tokens)

    def on_finished(self, timing, reason: str) -> None:
        """A finished request's engine-side timing (nvllm.metrics.RequestTiming) and finish reason (the
        engine's; counted under vLLM's name for it, anything else as abort)."""
        self._(self.success, FINISHED_REASONS.get(reason, "abort")).inc()
        self._(self.prompt_len).observe(timing.input_len)
        self._(self.output_len).observe(timing.output_len)
        if timing.first_scheduled is not None:
            self._(self.queue).observe(timing.first_scheduled - timing.arrival)
        if timing.token_times:
            self._(self.e2el).observe(timing.token_times[-1] - timing.arrival)
            if timing.output_len > 1:
                self._(self.tpot).observe((timing.token_times[-1] - timing.token_times[0]) / (timing.output_len - 1))

    def collect(self):
        """The tokens routed to each expert of each MoE layer, as the model counted them so far (no
        family where nothing is counted: a dense model, moe.expert_load=false)."""
        load = self._expert_load and self._expert_load()
        if not load:
            return
        family = CounterMetricFamily("nvllm:moe_expert_tokens", "Tokens routed to each expert of each mixture-of-"
                                     "experts layer (moe.expert_load).", labels=["model_name", "layer", "expert"])
        for layer, counts in load.items():
            for expert, n in enumerate(counts):
                family.add_metric([self.model_name, str(layer), str(expert)], n)
        yield family

    def render(self) -> bytes:
        return generate_latest(self.registry)
