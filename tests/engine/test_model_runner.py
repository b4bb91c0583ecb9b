"""Model-runner logic that CUDA graphs depend on, checked on the CPU: bucket choice (forward=cudagraph)
and padded decode inputs compute the same logits and leave the allocator's cache blocks alone."""
import random

import pytest
import torch

from nvllm import LLM, SamplingParams
from nvllm.engine.model_runner import step_inputs
from nvllm.forward.cudagraph import graph_batch_sizes, graph_bucket
from tests.conftest import hf_greedy


def test_graph_batch_sizes():
    assert graph_batch_sizes(512) == [1, 2, 4, 8] + list(range(16, 513, 16))
    assert graph_batch_sizes(1000)[-1] == 512
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    assert graph_batch_sizes(40) == [1, 2, 4, 8, 16, 32, 40]


@pytest.mark.parametrize("n, bucket", [(1, 1), (3, 4), (4, 4), (9, 16), (17, 32), (40, 40), (41, None)])
def test_graph_bucket(n, bucket):
    assert graph_bucket(graph_batch_sizes(40), n) == bucket
    assert graph_bucket([], n) is None


def test_padded_decode_matches_unpadded(tiny_qwen3_path):
    rng = random.Random(0)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (3, 17, 40)]
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8}, max_model_len=128, max_num_batched_tokens=256) as llm:
        engine = llm.engine
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=4))
        engine.step()  # prefill
        plan = engine.scheduler.schedule()  # the first decode step
        seqs = plan.seqs
        assert plan.is_decode and plan.num_tokens == [1] * len(seqs)
        runner, (inputs, _) = engine.executor, step_inputs(plan)
        caches = [(m, m.k_cache.clone(), m.v_cache.clone()) for m in runner._attention_layers()]
        plain = runner.forward(*runner.prepare(inputs))
        after_plain = [(m.k_cache.clone(), m.v_cache.clone()) for m, _, _ in caches]
        for m, k, v in caches:
            m.k_cache.copy_(k), m.v_cache.copy_(v)
        width = -(-128 // 8)
        padded = runner.forward(*runner.prepare(inputs, pad_to=8, table_width=width))
        assert padded.shape[0] == 8
        padded = padded[:len(seqs)]
        torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
        assert padded.argmax(-1).tolist() == plain.argmax(-1).tolist()
        blocks = runner.num_blocks  # the allocator's blocks: padding wrote only into the spare one
        for (m, _, _), (k, v) in zip(caches, after_plain):
            torch.testing.assert_close(m.k_cache[:blocks], k[:blocks], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m.v_cache[:blocks], v[:blocks], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_matches_transformers(tiny_qwen3_path):
    rng = random.Random(2)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 9, 30)]
    want = hf_greedy(tiny_qwen3_path, prompts, 12)
    with LLM(tiny_qwen3_path, compile=True, kv_cache={"block_size": 8, "num_blocks": 8}) as llm:
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
        assert llm.engine.config.compile is True
        assert llm.engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_cudagraph_matches_eager_on_cuda(tiny_qwen3_path, attention):
    rng = random.Random(3)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 5, 30, 70, 9)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    tokens = {}
    for forward in ("eager", "cudagraph"):
        with LLM(tiny_qwen3_path, device="cuda", dtype="float32", forward=forward, attention=attention,
                 max_num_seqs=16, kv_cache={"block_size": 16}, max_model_len=256, max_num_batched_tokens=512) as llm:
            tokens[forward] = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
            assert bool(getattr(llm.engine.executor.forward_strategy, "graphs", None)) == (forward == "cudagraph")
    assert tokens["cudagraph"] == tokens["eager"]
