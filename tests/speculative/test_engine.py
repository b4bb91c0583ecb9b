"""What the engine does around verification with speculation on: a stop string, a stop token or
max_tokens inside an accepted run ends the request where speculative=none ends it; streamed deltas
carry several tokens and add up to the output; one time per token, inter-token latencies per
chunk; the counters in metrics.json, the server's /metrics and the progress bar; bad keys refused
naming the key."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
from nvllm.metrics import RequestTiming, serving_metrics

NGRAM = {"name": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 1, "max_num_draft_tokens": 64}
QUOTE = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module")
def engines(smollm2_path):
    """SmolLM2 without and with n-gram drafting."""
    small = dict(max_model_len=512, kv_cache={"memory_budget_gb": 0.1})
    with LLM(smollm2_path, **small) as plain, LLM(smollm2_path, speculative=NGRAM, **small) as spec:
        yield plain, spec


def outcome(llm, params):
    out = llm.generate([llm.chat_prompt(QUOTE)], params, use_tqdm=False)[0].outputs[0]
    return out.token_ids, out.text, out.finish_reason


@pytest.mark.parametrize("params", [
    dict(stop=["lazy"]), dict(stop=["fox jumps"]), dict(stop=["dog near"]),  # stop strings inside accepted runs
    dict(stop_token_ids=[23790]),  # " lazy": a stop token inside one
    dict(max_tokens=5), dict(max_tokens=7, ignore_eos=True),
], ids=str)
def test_a_run_ends_where_no_speculation_ends(engines, params):
    plain, spec = engines
    params = SamplingParams(**{"temperature": 0, "max_tokens": 40, **params})
    before = spec.engine.stats.spec_decode.num_accepted_tokens
    assert outcome(spec, params) == outcome(plain, params)
    assert spec.engine.stats.spec_decode.num_accepted_tokens > before, "no draft was accepted: nothing was tested"
    assert spec.engine.kv_cache.num_free_blocks == spec.engine.kv_cache.num_blocks


@pytest.mark.parametrize("params", [dict(max_tokens=40), dict(max_tokens=40, stop=["fox jumps"]), dict(max_tokens=7)],
                         ids=str)
def test_logprobs_as_without_speculation(engines, params):
    """Each token of an accepted run has its logprobs, from the row that verified it; a run cut
    short (a stop string, max_tokens) keeps only its tokens' entries and their sum."""
    plain, spec = engines
    params = SamplingParams(temperature=0, logprobs=2, **params)
    want, got = (llm.generate([llm.chat_prompt(QUOTE)], params, use_tqdm=False)[0].outputs[0] for llm in (plain, spec))
    assert got.token_ids == want.token_ids and len(got.logprobs) == len(want.token_ids)
    for g, w in zip(got.logprobs, want.logprobs):
        assert g.keys() == w.keys() and all(g[t].logprob == pytest.approx(w[t].logprob, abs=1e-4) for t in g)
    assert got.cumulative_logprob == pytest.approx(want.cumulative_logprob, abs=1e-3)


def test_streamed_deltas_carry_several_tokens_and_add_up(engines):
    plain, spec = engines
    params = SamplingParams(temperature=0, max_tokens=40)
    deltas = list(spec.stream([spec.chat_prompt(QUOTE)], params))
    assert max(len(d.new_token_ids) for d in deltas) > 1
    tokens, text, reason = outcome(plain, params)
    assert [t for d in deltas for t in d.new_token_ids] == tokens
    assert "".join(d.new_text for d in deltas) == text and deltas[-1].finish_reason == reason


def test_one_time_per_token_and_itl_per_chunk(engines):
    _, spec = engines
    out = spec.generate([spec.chat_prompt(QUOTE)], SamplingParams(temperature=0, max_tokens=40), use_tqdm=False)[0]
    completion = out.outputs[0]
    assert len(completion.token_times) == len(completion.token_ids)
    chunks = sorted(set(completion.token_times))
    assert len(chunks) < len(completion.token_times), "no step gave several tokens"
    timing = RequestTiming(out.metrics.arrival_time, completion.token_times, 10, len(completion.token_ids))
    m = serving_metrics([timing], 1.0, detailed=True)
    assert m["itls"] == [[b - a for a, b in zip(chunks, chunks[1:])]]


def test_metrics_json_and_progress_bar(tmp_path, tiny_qwen3_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nvllm.run", f"hydra.run.dir={tmp_path}/run", "model=qwen3", f"model.path={tiny_qwen3_path}",
         "workload=random", "workload.num_seqs=4", "workload.input_len=[4,20]", "workload.output_len=[16,24]",
         "workload.max_token_id=500", "max_model_len=128", "speculative=ngram", "speculative.num_speculative_tokens=3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    spec = m["spec_decode"]
    assert spec["num_spec_tokens"] == 3 and spec["num_drafts"] > 0
    assert spec["num_draft_tokens"] <= 3 * spec["num_drafts"]
    assert spec["num_accepted_tokens"] == sum(spec["num_accepted_tokens_per_pos"])
    assert spec["draft_acceptance_rate"] == pytest.approx(spec["num_accepted_tokens"] / spec["num_draft_tokens"])
    assert spec["mean_acceptance_length"] == pytest.approx(1 + spec["num_accepted_tokens"] / spec["num_drafts"])
    assert spec["acceptance_rate_per_pos"] == [n / spec["num_drafts"] for n in spec["num_accepted_tokens_per_pos"]]
    assert m["effective_config"]["speculative"] == {"name": "ngram", "num_speculative_tokens": 3,
                                                    "prompt_lookup_max": 4, "prompt_lookup_min": 1,
                                                    "disable_by_batch_size": None, "max_num_draft_tokens": None}
    assert "drafts accepted" in proc.stderr  # tqdm's bar


def test_speculative_none_reserves_nothing_and_counts_nothing(tmp_path, tiny_qwen3_path):
    asked = []
    with LLM(tiny_qwen3_path) as llm:
        schedule = llm.engine.scheduler.schedule
        llm.engine.scheduler.schedule = lambda lookahead=0: asked.append(lookahead) or schedule(lookahead)
        llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
        assert llm.engine.stats.spec_decode is None and asked and set(asked) == {0}


@pytest.mark.parametrize("speculative, match", [
    ({"name": "ngram", "num_speculative_tokens": 0}, r"speculative\.num_speculative_tokens=0 is not allowed"),
    ({"name": "draft", "num_speculative_tokens": -1}, r"speculative\.num_speculative_tokens=-1 is not allowed"),
    ({"name": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2}, r"speculative\.prompt_lookup_max=2: .*>= "),
    ({"name": "ngram", "prompt_lookup_min": 0}, r"speculative\.prompt_lookup_min=0"),
    ({"name": "ngram", "max_num_draft_tokens": 0}, r"speculative\.max_num_draft_tokens=0 is not allowed"),
    ({"name": "draft", "num_layers": 3}, r"speculative\.num_layers=3: the target has 2 layers"),
    ({"name": "draft", "num_layers": 0}, r"speculative\.num_layers=0"),
])
def test_bad_keys_are_refused_naming_them(tiny_qwen3_path, speculative, match):
    with pytest.raises(ConfigError, match=match):
        LLM(tiny_qwen3_path, speculative=speculative)


def test_a_draft_model_of_another_vocabulary_is_refused(tiny_qwen3_path, tmp_path):
    from nvllm.tools.checkpoint import make_random_checkpoint

    other = make_random_checkpoint("llama", str(tmp_path / "draft"), preset="tiny", vocab_size=256)
    with pytest.raises(ConfigError, match=r"speculative\.model='.*draft': its vocabulary has 256 tokens and the "
                                          r"target's 512"):
        LLM(tiny_qwen3_path, speculative={"name": "draft", "model": other})


def test_cli_refuses_a_bad_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", f"hydra.run.dir={tmp_path}/run", "speculative=ngram",
                           "speculative.num_speculative_tokens=0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "speculative.num_speculative_tokens=0 is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # a server process loading SmolLM2: about a minute here
def test_openai_server_with_speculation(engines, tmp_path):
    """The server with n-gram drafting: a streamed chat answer equals the offline one without
    speculation, its chunks carry several tokens, and /metrics reports the counters."""
    import httpx
    import openai

    from tests.test_serve import Server

    plain, _ = engines
    params = SamplingParams(temperature=0, max_tokens=40)
    _, want, _ = outcome(plain, params)
    server = Server(tmp_path, "max_model_len=512", "speculative=ngram", "speculative.num_speculative_tokens=8",
                    "speculative.prompt_lookup_min=1")
    try:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120) as client:
            stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUOTE}],
                                                    max_tokens=40, temperature=0, stream=True)
            pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces) == want
        spec = httpx.get(f"{server.url}/metrics/serving", timeout=10).json()["spec_decode"]
        assert spec["num_drafts"] > 0 and spec["num_accepted_tokens"] > 0
        text = httpx.get(f"{server.url}/metrics", timeout=10).text  # Prometheus, vLLM's names under nvllm:
        assert f'nvllm:spec_decode_num_drafts_total{{model_name="smollm2"}} {float(spec["num_drafts"])}' in text
        assert (f'nvllm:spec_decode_num_accepted_tokens_total{{model_name="smollm2"}} '
                f'{float(spec["num_accepted_tokens"])}') in text
        assert 'nvllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="smollm2",position="0"}' in text
    finally:
        server.stop()


def test_overlap_scheduling_is_refused_beside_a_drafter(tiny_qwen3_path):
    from transformers import AutoConfig

    from nvllm.config import Config, compose

    config = Config.from_cfg(compose(model=tiny_qwen3_path, speculative="ngram"))
    config.async_scheduling = True  # overlap scheduling's switch (async_scheduling=true)
    with pytest.raises(ConfigError, match=r"async_scheduling=true .* speculative=ngram"):
        config.resolve(AutoConfig.from_pretrained(tiny_qwen3_path))


def test_overlap_scheduling_auto_stays_off_and_a_simulated_forward_is_refused_beside_a_drafter(tiny_qwen3_path):
    from transformers import AutoConfig

    from nvllm.config import Config, compose

    hf_config = AutoConfig.from_pretrained(tiny_qwen3_path)
    resolved = Config.from_cfg(compose(model=tiny_qwen3_path, speculative="ngram")).resolve(hf_config)
    assert resolved.async_scheduling is False  # auto: off beside a drafter, wherever it runs
    with pytest.raises(ConfigError, match=r"speculative=ngram: forward=simulated computes no logits"):
        Config.from_cfg(compose(model=tiny_qwen3_path, speculative="ngram", forward="simulated")).resolve(hf_config)


def test_disable_by_batch_size(tiny_qwen3_path):
    """No drafts while more requests than disable_by_batch_size run; drafts again once fewer do."""
    prompts = [[5, 6, 7] * 6, [9] * 3, [1, 2] * 5, [3, 4, 5, 6] * 4]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (40, 10, 10, 10)]
    seen = []
    with LLM(tiny_qwen3_path, speculative={"name": "ngram", "prompt_lookup_min": 1, "disable_by_batch_size": 1},
             kv_cache={"block_size": 8}, max_model_len=128) as llm:
        engine, propose = llm.engine, llm.engine.drafter.propose
        engine.drafter.propose = lambda seqs, slots: seen.append(len(engine.scheduler.running)) or propose(seqs, slots)
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8}, max_model_len=128) as llm:
        assert got == [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert seen and set(seen) == {1}  # the long request alone, once the three short ones finished


def test_a_step_shares_out_max_num_draft_tokens(tiny_qwen3_path):
    """On a CPU (auto: 8 drafts a step) four running requests reserve 2 slots each, one alone 8."""
    prompts = [[5, 6, 7] * 6, [9] * 3, [1, 2] * 5, [3, 4, 5, 6] * 4]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (40, 10, 10, 10)]
    seen = []
    with LLM(tiny_qwen3_path, speculative={"name": "ngram", "prompt_lookup_min": 1},
             kv_cache={"block_size": 8}, max_model_len=128) as llm:
        engine, propose = llm.engine, llm.engine.drafter.propose
        engine.drafter.propose = lambda seqs, slots: seen.append(
            (len(engine.scheduler.running), list(slots))) or propose(seqs, slots)
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8}, max_model_len=128) as llm:
        assert got == [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert all(sum(slots) <= 8 and max(slots) <= 8 // running for running, slots in seen)
    assert (4, [2, 2, 2, 2]) in seen and (1, [8]) in seen


@pytest.mark.parametrize("params", [
    dict(n=2, seed=7), dict(min_p=0.2, seed=3), dict(repetition_penalty=1.05, seed=4),
    dict(presence_penalty=0.8, frequency_penalty=0.4, seed=5), dict(n=2, top_k=20, top_p=0.9, min_p=0.05, seed=6),
    dict(n=3, temperature=0, repetition_penalty=1.1),
], ids=str)
def test_sampling_options_give_the_tokens_of_no_speculation(engines, params):
    """Seeded sampling with n completions, min_p, the three penalties and top-k/top-p: each row of a
    verify step is drawn by the run's own sampler with the history before it, so every completion's
    tokens are those speculative=none draws."""
    plain, spec = engines
    params = SamplingParams(**{"temperature": 0.8, "max_tokens": 32, **params})
    before = spec.engine.stats.spec_decode.num_draft_tokens
    want, got = (llm.generate([llm.chat_prompt(QUOTE)], params, use_tqdm=False)[0] for llm in (plain, spec))
    assert [c.token_ids for c in got.outputs] == [c.token_ids for c in want.outputs]
    assert spec.engine.stats.spec_decode.num_draft_tokens > before, "nothing was drafted: nothing was tested"
    assert spec.engine.kv_cache.num_free_blocks == spec.engine.kv_cache.num_blocks
