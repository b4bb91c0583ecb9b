"""What a vLLM user writes runs (issue 33): the embedded SmolLM2 by its Hub id without a download,
vLLM's prompt shapes ({"prompt": ...}, {"prompt_token_ids": ...}, lists of any), get_tokenizer(),
CompletionOutput.stop_reason, vLLM-only arguments refused by name with nvllm's alternative; and
LLM.chat takes what the server takes, through the server's own conversion (issue 32)."""
import pytest

from nvllm import LLM, SamplingParams
from nvllm.models.weights import SMOLLM2_REPO, smollm2_path
from nvllm.vllm_args import UnsupportedArgumentError

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """SmolLM2 by its Hub id, with an empty Hugging Face cache and downloads off: only the embedded copy can serve."""
    import huggingface_hub.constants as hub

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub")))
        mp.setattr(hub, "HF_HUB_OFFLINE", True)
        with LLM(SMOLLM2_REPO, max_model_len=256, max_num_batched_tokens=512) as llm:
            yield llm


def greedy(n: int, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, **kwargs)


def test_the_hub_id_is_the_embedded_model(llm):
    assert llm.engine.model_path == str(smollm2_path())
    assert llm.get_tokenizer() is llm.tokenizer and llm.get_tokenizer().decode(llm.get_tokenizer().encode("Paris")) == "Paris"


def test_vllm_prompt_shapes(llm):
    text = llm.chat_prompt(QUESTION)
    ids = llm.get_tokenizer().encode(text)
    want = llm.generate(text, greedy(6), use_tqdm=False)[0].outputs[0]
    one = llm.generate({"prompt": text}, greedy(6), use_tqdm=False)
    assert len(one) == 1 and one[0].outputs[0].token_ids == want.token_ids and one[0].prompt == text
    mixed = llm.generate([{"prompt": text}, {"prompt_token_ids": ids}, ids, text], greedy(6), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed] == [want.token_ids] * 4
    assert [o.prompt for o in mixed] == [text, None, None, text]
    assert mixed[1].prompt_token_ids == ids
    streamed = [d.new_token_ids for d in llm.stream([{"prompt_token_ids": ids}], greedy(6))]
    assert sum(streamed, []) == want.token_ids


def test_stop_reason_names_the_stop_string_or_token(llm):
    prompt = llm.chat_prompt(QUESTION)
    plain = llm.generate(prompt, greedy(40), use_tqdm=False)[0].outputs[0]
    assert "Paris" in plain.text
    assert plain.stop_reason is None  # end-of-sequence or length: vLLM's None
    by_string = llm.generate(prompt, greedy(40, stop=["zzz", "Paris"]), use_tqdm=False)[0].outputs[0]
    assert (by_string.finish_reason, by_string.stop_reason) == ("stop", "Paris")
    stop_token = next(t for i, t in enumerate(plain.token_ids) if i >= 2 and t not in plain.token_ids[:i])
    by_token = llm.generate(prompt, greedy(40, stop_token_ids=[stop_token]), use_tqdm=False)[0].outputs[0]
    assert (by_token.finish_reason, by_token.stop_reason, by_token.token_ids[-1]) == ("stop", stop_token, stop_token)
    assert llm.generate(prompt, greedy(2), use_tqdm=False)[0].outputs[0].stop_reason is None  # length
    last = [d for d in llm.stream([prompt], greedy(40, stop=["Paris"])) if d.finished][0]
    assert last.stop_reason == "Paris"


def test_chat_takes_what_the_server_takes_through_its_conversion(llm, monkeypatch):
    from nvllm.server import prompts

    as_string = [{"role": "user", "content": QUESTION}]
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                             {"type": "text", "text": "of France?"}]}]
    want, got = (llm.chat(c, greedy(8), use_tqdm=False)[0] for c in (as_string, as_parts))
    assert got.prompt == want.prompt and got.prompt_token_ids == want.prompt_token_ids
    assert got.outputs[0].token_ids == want.outputs[0].token_ids
    monkeypatch.setattr(prompts, "_tokenizer", llm.get_tokenizer())
    assert prompts._encode_chat(as_parts) == (True, got.prompt_token_ids)  # the server's worker: the same ids
    roles = [{"role": role, "content": "hi"} for role in ("system", "developer", "user", "assistant", "tool", "user")]
    assert llm.chat(roles, greedy(1), use_tqdm=False)[0].prompt.count("<|im_start|>") == 7  # the template's prompt too
    for bad, match in [([{"role": "robot", "content": "hi"}], "message 0 must be a dict whose role is one of system"),
                       ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
                        "message 0: content parts must be {'type': 'text', 'text': str}"),
                       ([{"role": "user", "content": 5}], "message 0: content must be a string")]:
        with pytest.raises(ValueError, match=f"conversation 0: {match}"):
            llm.chat(bad, greedy(1), use_tqdm=False)
        assert prompts._encode_chat(bad)[0] is False and match.split(":")[-1].strip()[:20] in prompts._encode_chat(bad)[1]
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("call, match", [
    (lambda llm: SamplingParams(best_of=2), r"SamplingParams\(best_of=...\) is vLLM's; nvllm has no best_of: use n="),
    (lambda llm: SamplingParams(include_stop_str_in_output=True), "stop_reason names it"),
    (lambda llm: SamplingParams(logit_bias={1: 2.0}), "a sampler plugin"),
    (lambda llm: SamplingParams(tempurature=0.5), r"SamplingParams\(tempurature=...\): no such argument; did you mean temperature\?"),
    (lambda llm: LLM("smollm2", tensor_parallel_size=2), r"LLM\(tensor_parallel_size=...\) is vLLM's; .*: tp=N"),
    (lambda llm: LLM("smollm2", enable_prefix_caching=False), "kv_cache={'prefix_caching': True}"),
    (lambda llm: llm.generate("hi", greedy(1), priority=[1]), r"LLM.generate\(priority=...\) .*: priorities="),
    (lambda llm: llm.generate("hi", greedy(1), lora_request=None), r"LLM.generate\(lora_request=...\) is vLLM's; nvllm has no lora_request$"),
    (lambda llm: llm.stream("hi", greedy(1), sampling_param=None), "did you mean sampling_params"),
    (lambda llm: llm.chat([{"role": "user", "content": "hi"}], chat_template="{{x}}"), "chat_template_kwargs"),
])
def test_vllm_only_arguments_are_refused_naming_them(llm, call, match):
    with pytest.raises(UnsupportedArgumentError, match=match) as e:
        call(llm)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert not llm.engine.has_unfinished_requests()
