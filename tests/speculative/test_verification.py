"""Speculative decoding changes no greedy token, through every forward strategy and attention
backend that runs on this CPU (triton in its interpreter), with drafts both accepted and rejected;
a verify step really is one forward pass (the C step's, under fused_cpu); under tensor parallelism
the draft and verify steps run on every rank."""
import random

import pytest
import torch

from nvllm import LLM, SamplingParams
from nvllm.forward.eager import EagerForward
from nvllm.tools.checkpoint import make_random_checkpoint
from tests.attention.conftest import triton_kernels
from tests.conftest import hf_greedy

MAX_NEW = 20
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
# no per-step limit on drafts (a CPU's auto is 8 over the batch): every sequence of a batch drafts
DRAFTERS = {"ngram": {"name": "ngram", "max_num_draft_tokens": 64},
            "draft": {"name": "draft", "num_layers": 1, "max_num_draft_tokens": 64}}
STRATEGIES = {  # forward strategy x attention backend
    "fused_cpu": {"forward": "fused_cpu", "attention": "cpu"},
    "eager-cpu": {"forward": "eager", "attention": "cpu"},
    "eager-sdpa": {"forward": "eager", "attention": "sdpa"},
    "eager-triton": {"forward": "eager", "attention": "triton"},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """Tiny random Qwen3 whose greedy output both repeats and moves on (transformers' default
    initializer range makes one that repeats a single token forever: every draft accepted)."""
    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("spec-qwen3")), preset="tiny", seed=0,
                                  initializer_range=0.1)


def prompts() -> list[list[int]]:
    rng = random.Random(3)
    pattern = [rng.randrange(512) for _ in range(5)]
    out = [[rng.randrange(512) for _ in range(n)] for n in (2, 9, 30)] + [pattern * 5]
    return out + [out[2][:24] + [7, 7]]  # a prefix-cache hit on the third prompt's blocks


@pytest.fixture(scope="module")
def reference(checkpoint):
    return hf_greedy(checkpoint, prompts(), MAX_NEW)


def generate(path, drafter, **overrides):
    with LLM(path, speculative=drafter, **{"kv_cache": {"block_size": 8}, "max_model_len": 128, **overrides}) as llm:
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompts(), GREEDY, use_tqdm=False)]
        kv = llm.engine.kv_cache
        assert kv.num_free_blocks == kv.num_blocks, "blocks leaked"
        return tokens, llm.engine.stats.spec_decode


# the draft drafter's many small steps take about 45 s in Triton's interpreter: slow
@pytest.mark.parametrize("drafter, strategy", [
    pytest.param(d, s, id=f"{d}-{s}", marks=[pytest.mark.slow] if (d, s) == ("draft", "eager-triton") else [])
    for d in DRAFTERS for s in STRATEGIES])
def test_greedy_tokens_unchanged_through_every_strategy(checkpoint, reference, strategy, drafter):
    if strategy == "eager-triton":
        triton_kernels("cpu")
    tokens, stats = generate(checkpoint, DRAFTERS[drafter], **STRATEGIES[strategy])
    assert tokens == reference
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens, "drafts were not both accepted and rejected"


def test_fused_cpu_runs_verify_and_draft_steps_in_c(checkpoint, monkeypatch):
    """Verify steps are short queries over long contexts: the C step takes them, and the early-exit
    draft steps too; only a long prefill would fall back to the torch modules."""
    fallbacks = []
    eager_call = EagerForward.__call__

    def spy(self, input_ids, positions, meta):
        fallbacks.append((meta.num_logits, meta.num_layers))
        return eager_call(self, input_ids, positions, meta)

    monkeypatch.setattr(EagerForward, "__call__", spy)
    long_prompt = [random.Random(1).randrange(512) for _ in range(90)]
    with LLM(checkpoint, forward={"name": "fused_cpu", "max_prefill_context": 64}, attention="cpu",
             speculative={"name": "draft", "num_layers": 1}, kv_cache={"block_size": 8}, max_model_len=256) as llm:
        out = llm.generate([long_prompt], GREEDY, use_tqdm=False)[0]
        stats = llm.engine.stats.spec_decode
    assert stats.num_drafts > 0 and out.outputs[0].token_ids == hf_greedy(checkpoint, [long_prompt], MAX_NEW)[0]
    assert fallbacks == [(None, None)], "only the 90-token prefill (context > 64) may leave the C step"


def test_fused_cpu_takes_a_verify_step_over_a_long_context():
    from nvllm.attention.base import AttentionMetadata
    from nvllm.forward.fused_cpu import FusedCPUForward

    strategy = FusedCPUForward.__new__(FusedCPUForward)
    strategy.config = FusedCPUForward.Config(max_prefill_context=512)
    strategy.weights, strategy.quantized = torch.float32, False

    def meta(query_lens, context_lens, num_logits):
        return AttentionMetadata(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), query_lens,
                                 context_lens, is_decode=max(query_lens) == 1, num_logits=num_logits)

    assert strategy.runs(meta([5, 1, 3], [3000, 2000, 700], [5, 1, 3]))  # verify steps, long contexts
    assert not strategy.runs(meta([5, 600], [3000, 600], [5, 1]))  # beside a long prefill
    assert strategy.runs(meta([5, 100], [3000, 100], [5, 1]))  # beside a short one


@pytest.mark.parametrize("drafter", [pytest.param("ngram", marks=pytest.mark.slow), "draft"])
def test_tp2_drafts_and_verifies_on_every_rank(tiny_qwen3_path, drafter):
    rng = random.Random(5)
    pattern = [rng.randrange(512) for _ in range(6)]
    batch = [pattern * 4, [rng.randrange(512) for _ in range(11)]]
    want = hf_greedy(tiny_qwen3_path, batch, 16)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    with LLM(tiny_qwen3_path, tp=2, speculative=DRAFTERS[drafter], kv_cache={"block_size": 8}, max_model_len=128) as llm:
        assert [o.outputs[0].token_ids for o in llm.generate(batch, params, use_tqdm=False)] == want
        assert llm.engine.stats.spec_decode.num_accepted_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_tp3_smollm2_with_speculation_matches_tp1(smollm2_path, drafter):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False)
               for q in ("Repeat exactly: the cat sat on the mat, the cat sat on the mat.", "What is 12 times 12?")]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def run(**overrides):
        with LLM(smollm2_path, kv_cache={"block_size": 16}, max_model_len=256, **overrides) as llm:
            return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)], llm.engine.stats.spec_decode

    tp1, _ = run()
    tp3, stats = run(tp=3, speculative=DRAFTERS[drafter])
    assert tp3 == tp1 and stats.num_drafts > 0


def test_a_plugin_sampler_that_reads_the_history_verifies_the_same(checkpoint):
    """Verification draws each row with the run's own sampler, the drafts before the row in its
    history: nvllm-penalties' repetition penalty (greedy and seeded) gives what it gives without
    speculation. The draft is the whole model without the penalty: right where the penalty leaves
    the argmax alone, wrong where it moves it."""
    from nvllm import registry
    from nvllm.plugins import load_plugins

    load_plugins()
    if "penalties" not in registry.names("sampler"):
        pytest.skip("the nvllm-penalties plugin is not installed (make setup installs it)")
    sampler = {"name": "penalties", "repetition_penalty": 1.3}
    params = [SamplingParams(temperature=t, seed=s, max_tokens=MAX_NEW, ignore_eos=True)
              for t, s in ((0, None), (0.7, 1), (0, None), (1.0, 2), (0, None))]

    def run(**overrides):
        with LLM(checkpoint, sampler=sampler, kv_cache={"block_size": 8}, max_model_len=128, **overrides) as llm:
            return [o.outputs[0].token_ids for o in llm.generate(prompts(), params, use_tqdm=False)], llm.engine.stats.spec_decode

    want, _ = run()
    got, stats = run(speculative={"name": "draft", "num_layers": 2})
    assert got == want and 0 < stats.num_accepted_tokens < stats.num_draft_tokens


@pytest.mark.parametrize("kv_cache", [{"block_size": 8}, {"block_size": 8, "num_blocks": 14}], ids=["roomy", "preempting"])
def test_a_draft_model_of_its_own(checkpoint, reference, tmp_path_factory, kv_cache):
    """speculative.model: another checkpoint of the same vocabulary drafts with a cache of its own,
    catching up on what it has not seen; the target itself as the draft model agrees with every
    greedy token (its cache is right after prefix hits, rejections and preemptions), a different
    one with few, and the tokens are the target's either way."""
    other = make_random_checkpoint("llama", str(tmp_path_factory.mktemp("spec-draft")), preset="tiny", seed=7,
                                   initializer_range=0.1)
    same, same_stats = generate(checkpoint, {"name": "draft", "model": checkpoint}, kv_cache=kv_cache)
    assert same == reference and same_stats.num_accepted_tokens == same_stats.num_draft_tokens > 0
    small = {"name": "draft", "model": other, "num_layers": 1, "num_speculative_tokens": 2}
    tokens, stats = generate(checkpoint, small, kv_cache=kv_cache)
    assert tokens == reference and stats.num_accepted_tokens < stats.num_draft_tokens
