"""Greedy tokens equal Hugging Face transformers' (float32, CPU) on the same weights, for every
engine configuration that must compute the same function."""
import random

import pytest

from nvllm import LLM, SamplingParams
from tests.conftest import hf_greedy

MAX_NEW = 32
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
BASE = dict(max_model_len=512, max_num_batched_tokens=2048)

CHAT = [
    "What is the capital of France?",
    "Tell me a story about a dragon who loves tea. Make it long, with many characters and places.",
    "Explain photosynthesis in simple terms.",
    "List five fruits that are red.",
]
RAW = [
    "hi",
    "def fibonacci(n):",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker "
    "who had spent his whole life building clocks that could tell not only the hour but the weather, "
    "the tides and the moods of the people who owned them. One winter morning",
]


@pytest.fixture(scope="module")
def smollm2_prompts(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    chat = [tok.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for m in CHAT]
    return chat + [tok.encode(t) for t in RAW]


@pytest.fixture(scope="module")
def qwen3_prompts():
    rng = random.Random(0)
    return [[rng.randrange(512) for _ in range(n)] for n in (1, 5, 16, 17, 33, 64, 100, 150)]


@pytest.fixture(scope="module")
def models(smollm2_path, tiny_qwen3_path, smollm2_prompts, qwen3_prompts):
    """name -> (model directory, prompts, Hugging Face greedy reference)."""
    return {
        "smollm2": (smollm2_path, smollm2_prompts, hf_greedy(smollm2_path, smollm2_prompts, MAX_NEW)),
        "qwen3-tiny": (tiny_qwen3_path, qwen3_prompts, hf_greedy(tiny_qwen3_path, qwen3_prompts, MAX_NEW)),
    }


def run(path, prompts, one_by_one=False, **overrides):
    with LLM(path, **{**BASE, **overrides}) as llm:
        if one_by_one:
            outputs = [llm.generate([p], GREEDY, use_tqdm=False)[0] for p in prompts]
        else:
            outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
        engine = llm.engine
        return [o.outputs[0].token_ids for o in outputs], engine.scheduler.num_preemptions, engine.kv_cache.hit_rate


def assert_same(got, want):
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert len(g) == MAX_NEW
        assert g == w, f"prompt {i}: first difference at token {next(j for j in range(len(w)) if g[j] != w[j])}"


@pytest.mark.parametrize("model", ["smollm2", "qwen3-tiny"])
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_batched(models, model, prefix_caching):
    path, prompts, want = models[model]
    got, _, _ = run(path, prompts, kv_cache={"prefix_caching": prefix_caching})
    assert_same(got, want)


@pytest.mark.parametrize("model", ["smollm2", "qwen3-tiny"])
def test_one_by_one(models, model):
    path, prompts, want = models[model]
    got, _, _ = run(path, prompts, one_by_one=True, kv_cache={"block_size": 16})
    assert_same(got, want)


@pytest.mark.parametrize("model", ["smollm2", "qwen3-tiny"])
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_preemption(models, model, prefix_caching):
    path, prompts, want = models[model]
    longest = max(len(p) for p in prompts) + MAX_NEW
    num_blocks = -(-longest // 16) + 4  # the longest request fits alone, the batch does not
    got, preemptions, _ = run(path, prompts, kv_cache={"block_size": 16, "num_blocks": num_blocks,
                                                       "prefix_caching": prefix_caching})
    assert preemptions > 0
    assert_same(got, want)


@pytest.mark.parametrize("model", ["smollm2", "qwen3-tiny"])
def test_shared_prefixes(models, model):
    """Prefix-cache hits: a shared system prefix, a prompt that is an exact multiple of the block
    size, and an exact duplicate (a 100% hit must still run its last block)."""
    path, prompts, _ = models[model]
    prefix = prompts[2][:40] if model == "smollm2" else prompts[6][:40]
    shared = [prefix + p for p in prompts[:4]]
    exact = (prefix * 2)[:48]
    batch = shared + [exact, exact, shared[1]]
    want = hf_greedy(path, batch, MAX_NEW)
    got, _, hit_rate = run(path, batch, max_num_seqs=2, kv_cache={"block_size": 16})
    assert hit_rate > 0.2
    assert_same(got, want)


@pytest.mark.parametrize("model", ["smollm2", "qwen3-tiny"])
@pytest.mark.parametrize("switches", [dict(forward="eager"), dict(attention="sdpa"),
                                      dict(forward={"name": "eager", "onednn": False})],
                         ids=["forward=eager", "attention=sdpa", "forward=eager forward.onednn=false"])
def test_cpu_switches(models, model, switches):
    """Every forward strategy x attention backend this CPU runs fast enough for real weights, beside
    the defaults (forward=fused_cpu, attention=cpu) that the other tests run: the torch modules
    every step (forward=eager, with oneDNN's packed weights and attention=cpu's kernel), sdpa (auto
    then picks eager), and eager without oneDNN (plain F.linear) — under preemption, so decode,
    prefill and re-prefill all run. forward=cudagraph needs CUDA (tests/engine/test_model_runner.py);
    attention=triton runs in Triton's interpreter on tiny shapes (tests/attention/test_triton.py)."""
    path, prompts, want = models[model]
    longest = max(len(p) for p in prompts) + MAX_NEW
    got, preemptions, _ = run(path, prompts, kv_cache={"block_size": 16, "num_blocks": -(-longest // 16) + 4},
                              **switches)
    assert preemptions > 0
    assert_same(got, want)
