"""The Python API: LLM(model, **overrides).generate(prompts, sampling_params)."""
import gc

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
        assert [o.index for o in outputs] == [0, 1, 2]
        assert [len(o.token_ids) for o in outputs] == [7, 3, 5]
        assert [o.token_ids for o in outputs] == [w[:n] for w, n in zip(want, (7, 3, 5))]
        assert all(o.prompt_token_ids == p for o, p in zip(outputs, prompts))
        single = llm.generate([1, 2, 3], params[0], use_tqdm=False)  # one prompt as a token list
        assert single[0].token_ids == outputs[0].token_ids


def test_text_prompts_and_seeded_sampling(smollm2_path):
    with LLM("smollm2", max_model_len=256, max_num_batched_tokens=512) as llm:
        prompt = llm.chat_prompt("What is the capital of France?")
        greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
        assert "Paris" in greedy.text
        assert greedy.token_ids and greedy.text == llm.tokenizer.decode(greedy.token_ids, skip_special_tokens=True)
        seeded = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=16, seed=7, ignore_eos=True)
        a = llm.generate([prompt], seeded, use_tqdm=False)[0].token_ids
        b = llm.generate([prompt, "Tell me a joke.", prompt], [seeded, SamplingParams(max_tokens=16), seeded],
                         use_tqdm=False)
        assert a == b[0].token_ids == b[2].token_ids


def test_close_frees_the_model(tiny_qwen3_path):
    import weakref

    llm = LLM(tiny_qwen3_path)
    model = weakref.ref(llm.engine.model_runner.model)
    llm.close()
    gc.collect()
    assert model() is None
    assert llm.engine is None
