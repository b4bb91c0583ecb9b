"""The Python API: LLM(model, **overrides).generate(prompts, sampling_params)."""
import gc

import pytest

from nvllm import LLM, SamplingParams
from tests.conftest import hf_greedy


def test_overrides_reach_the_engine(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, kv_cache={"prefix_caching": False, "block_size": 8}, max_num_seqs=4,
             max_model_len=128, max_num_batched_tokens=256) as llm:
        engine = llm.engine
        assert engine.scheduler.max_num_seqs == 4 and engine.config.max_model_len == 128
        assert engine.config.kv_cache.prefix_caching is False and engine.config.kv_cache.block_size == 8
        assert llm.config.model.name == "qwen3" and llm.config.model.path == tiny_qwen3_path


def test_outputs_in_prompt_order_with_per_prompt_params(tiny_qwen3_path):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9] * 5, [10]]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (7, 3, 5)]
    want = hf_greedy(tiny_qwen3_path, prompts, 7)
    with LLM(tiny_qwen3_path, max_num_seqs=2) as llm:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        assert [o.request_id for o in outputs] == ["0", "1", "2"]
        assert [len(o.outputs[0].token_ids) for o in outputs] == [7, 3, 5]
        assert [o.outputs[0].token_ids for o in outputs] == [w[:n] for w, n in zip(want, (7, 3, 5))]
        assert all(o.prompt_token_ids == p for o, p in zip(outputs, prompts))
        single = llm.generate([1, 2, 3], params[0], use_tqdm=False)  # one prompt as a token list
        assert single[0].outputs[0].token_ids == outputs[0].outputs[0].token_ids


def test_text_prompts_and_seeded_sampling(smollm2_path):
    with LLM("smollm2", max_model_len=256, max_num_batched_tokens=512) as llm:
        prompt = llm.chat_prompt("What is the capital of France?")
        greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].outputs[0]
        assert "Paris" in greedy.text
        assert greedy.token_ids and greedy.text == llm.tokenizer.decode(greedy.token_ids, skip_special_tokens=True)
        seeded = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=16, seed=7, ignore_eos=True)
        a = llm.generate([prompt], seeded, use_tqdm=False)[0].outputs[0].token_ids
        b = llm.generate([prompt, "Tell me a joke.", prompt], [seeded, SamplingParams(max_tokens=16), seeded],
                         use_tqdm=False)
        assert a == b[0].outputs[0].token_ids == b[2].outputs[0].token_ids


def test_close_frees_the_model(tiny_qwen3_path):
    import weakref

    llm = LLM(tiny_qwen3_path)
    model = weakref.ref(llm.engine.executor.model)
    llm.close()
    gc.collect()
    assert model() is None
    assert llm.engine is None


# -- vLLM's Python surface ----------------------------------------------------------------------------

def test_vllm_style_code_runs(smollm2_path):
    """What a vLLM user writes: generate()[0].outputs[0].text, chat(), n, logprobs."""
    with LLM("smollm2", max_model_len=256, max_num_batched_tokens=512) as llm:
        out = llm.generate(llm.chat_prompt("What is the capital of France?"), SamplingParams(temperature=0, max_tokens=12),
                           use_tqdm=False)[0]
        completion = out.outputs[0]
        assert "Paris" in completion.text and completion.finish_reason in ("stop", "length") and out.finished
        assert out.request_id == "0" and out.prompt.startswith("<|im_start|>") and out.prompt_token_ids
        assert out.metrics.ttft > 0 and out.metrics.arrival_time <= out.metrics.first_token_time
        chats = llm.chat([[{"role": "user", "content": "What is the capital of France?"}],
                          [{"role": "system", "content": "Answer in one word."},
                           {"role": "user", "content": "What is the capital of Italy?"}]],
                         SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
        assert chats[0].outputs[0].text == completion.text and "Rome" in chats[1].outputs[0].text
        assert "Answer in one word." in chats[1].prompt
        one = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                       SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
        assert one[0].outputs[0].text == completion.text
        two = llm.generate("Tell me a story.", SamplingParams(n=2, temperature=0.8, seed=3, max_tokens=8, logprobs=3,
                                                              ignore_eos=True),
                           use_tqdm=False)[0]
        assert [c.index for c in two.outputs] == [0, 1] and two.outputs[0].token_ids != two.outputs[1].token_ids
        for c in two.outputs:
            assert len(c.logprobs) == len(c.token_ids)
            for token, entry in zip(c.token_ids, c.logprobs):
                assert token in entry and 3 <= len(entry) <= 4  # the sampled token and the top 3
                assert sorted(lp.rank for t, lp in entry.items() if t != token or lp.rank <= 3)[:3] == [1, 2, 3]
                assert all(isinstance(lp.decoded_token, str) for lp in entry.values())
            assert c.cumulative_logprob == pytest.approx(sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs)))
        with pytest.raises(ValueError, match="LLM.chat takes a conversation"):
            llm.chat(["just a string"])


def test_logprobs_match_transformers(tiny_qwen3_path):
    """Greedy tokens' logprobs and the top 3 against the model's own log_softmax in transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    prompt = [3, 17, 42, 7, 99, 5]
    with LLM(tiny_qwen3_path) as llm:
        out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=3),
                           use_tqdm=False)[0].outputs[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1:-1]
    want = logits.log_softmax(-1)
    for step, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        top = want[step].topk(3)
        assert entry[token].rank == 1 and token == top.indices[0]
        assert sorted(entry) == sorted(top.indices.tolist())
        for t, lp in entry.items():
            assert lp.logprob == pytest.approx(want[step, t].item(), abs=1e-4)


def test_n_completions_share_the_prompts_blocks_through_the_prefix_cache(tiny_qwen3_path):
    prompt = list(range(1, 42))  # 5 full blocks of 8 and one token more
    greedy = SamplingParams(n=3, temperature=0, max_tokens=4, ignore_eos=True)
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8}) as llm:
        out = llm.generate(prompt, greedy, use_tqdm=False)[0]
        kv = llm.engine.kv_cache
        assert kv.num_hit_tokens == 2 * 40, "the 2 siblings found the prompt's 5 full blocks cached"
        assert len({tuple(c.token_ids) for c in out.outputs}) == 1  # greedy: the same completion 3 times
        assert out.outputs[0].token_ids == hf_greedy(tiny_qwen3_path, [prompt], 4)[0]
        sampled = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, ignore_eos=True),
                               use_tqdm=False)[0]
        again = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, ignore_eos=True),
                             use_tqdm=False)[0]
        assert [c.token_ids for c in sampled.outputs] == [c.token_ids for c in again.outputs]
        assert len({tuple(c.token_ids) for c in sampled.outputs}) == 3  # completion i draws with seed + i
        first = llm.generate(prompt, SamplingParams(temperature=1.0, seed=5, max_tokens=6, ignore_eos=True),
                             use_tqdm=False)[0]
        assert first.outputs[0].token_ids == sampled.outputs[0].token_ids
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8, "prefix_caching": False}) as llm:
        plain = llm.generate(prompt, greedy, use_tqdm=False)[0]
        assert [c.token_ids for c in plain.outputs] == [c.token_ids for c in out.outputs]


def test_n_and_abort_in_the_engine(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8}) as llm:
        engine = llm.engine
        free = engine.kv_cache.num_free_blocks
        engine.add_request("a", list(range(1, 30)), SamplingParams(n=3, temperature=0, max_tokens=50, ignore_eos=True))
        assert len(engine.sequences("a")) == 3
        engine.step()
        engine.abort_request("a")
        deltas = engine.step()
        assert sorted(d.index for d in deltas) == [0, 1, 2] and all(d.finish_reason == "abort" for d in deltas)
        assert [d.finished for d in deltas].count(True) == 1 and not engine.has_unfinished_requests()
        assert engine.kv_cache.num_free_blocks == free


def test_one_max_tokens_default_everywhere():
    from nvllm.config import compose
    from nvllm.sampling_params import DEFAULT_MAX_TOKENS

    assert SamplingParams().max_tokens == DEFAULT_MAX_TOKENS == compose(model="smollm2").sampling.max_tokens == 128
