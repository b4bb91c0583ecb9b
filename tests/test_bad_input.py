"""Bad input gets a clear error naming the problem and the fix; a rejected request never costs
the other requests their results."""
import pytest
import torch

from nvllm import LLM, SamplingParams
from nvllm.config import ConfigError
from nvllm.models.weights import MissingWeightsError
from nvllm.registry import UnknownComponentError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_qwen3_path):
    with LLM(tiny_qwen3_path, max_model_len=64, max_num_batched_tokens=256,
             kv_cache={"block_size": 8, "num_blocks": 6}) as llm:
        yield llm


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(top_p=0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(max_tokens=0), "max_tokens must be >= 1"),
    (dict(max_tokens=-3), "max_tokens must be >= 1"),
    # issue 23: every value within what the engine can hold, and of the type it must be
    (dict(top_k=2**63), r"top_k must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=2**64), r"seed must be an integer in \[-2\*\*63, 2\*\*64\)"),
    (dict(seed=-2**63 - 1), r"seed must be an integer in \[-2\*\*63, 2\*\*64\)"),
    (dict(max_tokens=2**63), r"max_tokens must be an integer in \[1, 2\*\*63\)"),
    (dict(max_tokens=True), "max_tokens must be an integer, got True"),
    (dict(max_tokens=4.0), "max_tokens must be an integer, got 4.0"),
    (dict(top_k="5"), "top_k must be an integer, got '5'"),
    (dict(seed=False), "seed must be an integer or None, got False"),
    (dict(temperature=float("inf")), "temperature must be >= 0 and finite"),
    (dict(temperature=float("nan")), "temperature must be >= 0 and finite"),
    (dict(temperature="0.5"), "temperature must be a number, got '0.5'"),
    (dict(temperature=True), "temperature must be a number, got True"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(ignore_eos="yes"), "ignore_eos must be True or False, got 'yes'"),
    (dict(ignore_eos=1), "ignore_eos must be True or False, got 1"),
    (dict(stop_token_ids=[2**63]), r"stop_token_ids must be a list of token ids \(integers in \[0, 2\*\*63\)\)"),
    (dict(stop=[b"x"]), "stop must be a list of non-empty strings"),
    (dict(n="2"), "n must be an integer, got '2'"),
    (dict(n=2**63), "n must be an integer >= 1"),
    (dict(min_p=True), "min_p must be a number, got True"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be > 0 and finite"),
    (dict(frequency_penalty=float("nan")), r"frequency_penalty must be in \[-2, 2\]"),
    (dict(min_tokens=2**63, max_tokens=2**63 - 1), r"min_tokens must be in \[0, max_tokens"),
    (dict(logprobs=True), "logprobs must be None or an integer"),
    (dict(seed=2**64 - 2, n=3), r"seed must be an integer in \[-2\*\*63, 2\*\*64\).*seed \+ n - 1"),
])
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("prompt, params, match", [
    ([], GREEDY, "empty prompt"),
    (list(range(64)), GREEDY, "max_model_len=64 leaves no room"),
    ([1, 2, 3] * 10, SamplingParams(temperature=0, max_tokens=40), "needs 8 KV blocks .* whole cache has 6"),
    ([1, 99999], GREEDY, r"token ids must be integers in \[0, 512\)"),
    ([True, False], GREEDY, r"token ids must be integers in \[0, 512\)"),  # not ids 1 and 0
    ("text", GREEDY, "has no tokenizer"),
])
def test_rejected_at_add(llm, prompt, params, match):
    with pytest.raises(ValueError, match=match):
        llm.engine.add_request("r", prompt, params)
    assert llm.engine.is_finished()  # nothing was queued


def test_values_of_the_right_type_and_range_pass():
    import numpy as np

    sp = SamplingParams(temperature=0, top_k=np.int64(5), max_tokens=np.int32(3), seed=2**64 - 1, top_p=np.float32(0.5),
                        stop_token_ids=(np.int64(7),))
    assert (sp.temperature, sp.top_k, sp.max_tokens, sp.stop_token_ids) == (0.0, 5, 3, [7])
    assert type(sp.top_k) is int and type(sp.temperature) is float and SamplingParams(seed=-2**63).seed == -2**63


def test_params_changed_after_construction_are_checked_when_added(llm):
    """SamplingParams is a mutable dataclass: add_request checks it again, so the value never reaches a step."""
    params = SamplingParams(temperature=0.5, max_tokens=4)
    params.top_k = 2**63
    with pytest.raises(ValueError, match="top_k must be an integer"):
        llm.engine.add_request("r", [1, 2, 3], params)
    assert llm.engine.is_finished()
    out = llm.generate([[1, 2, 3], [4, 5, 6]], [params, GREEDY], use_tqdm=False)
    assert out[0].finish_reason == "rejected" and "top_k" in out[0].error and len(out[1].token_ids) == 8


def test_bad_request_does_not_cost_others(llm):
    good = [[5, 6, 7], [8, 9, 10, 11]]
    alone = llm.generate(good, GREEDY, use_tqdm=False)
    mixed = llm.generate([good[0], [], good[1], list(range(70))], GREEDY, use_tqdm=False)
    assert [o.token_ids for o in (mixed[0], mixed[2])] == [o.token_ids for o in alone]
    assert mixed[1].finish_reason == "rejected" and "empty prompt" in mixed[1].error
    assert mixed[3].finish_reason == "rejected" and "max_model_len" in mixed[3].error
    assert all(len(o.token_ids) == 8 for o in alone)


def test_unknown_scheduler_lists_valid_names():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="fcfs"):
        LLM(scheduler="no-such-policy")


def test_unknown_name_in_registry():
    from nvllm import registry
    from nvllm.config import typed_config
    from nvllm.plugins import load_plugins

    load_plugins()
    with pytest.raises(UnknownComponentError, match=r"unknown scheduler 'nope'; valid names: .*fcfs"):
        registry.get("scheduler", "nope")
    with pytest.raises(UnknownComponentError, match=r"unknown model 'gpt9'; valid names: llama, qwen3"):
        typed_config("model", {"name": "gpt9"})


def test_unknown_model_option():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="smollm2"):
        LLM("gpt9")


def test_missing_weights_path(tmp_path):
    with pytest.raises(MissingWeightsError, match="not a Hugging Face model directory"):
        LLM(model={"name": "qwen3", "path": str(tmp_path)})


def test_missing_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=r"model=qwen3 has no model.path, and the Hugging Face repo Qwen/Qwen3-0.6B is not in the local cache .*model.path="):
        LLM("qwen3")


def test_wrong_architecture_for_checkpoint(tiny_qwen3_path):
    with pytest.raises(ValueError, match="holds a 'qwen3' model, which model=llama does not run"):
        LLM(model={"name": "llama", "path": tiny_qwen3_path})


@pytest.mark.parametrize("overrides, match", [
    (dict(cudagraph=True, device="cpu"), "cudagraph=true cannot run here: decode CUDA graphs need a CUDA device "
                                         "and this run is on cpu; use cudagraph=false or auto"),
    (dict(cudagraph=True, forward="eager"), "cudagraph=true asks for decode CUDA graphs and forward=eager runs none"),
    (dict(cudagraph=False, forward="cudagraph"), "forward=cudagraph and cudagraph=false contradict each other"),
    (dict(cudagraph="maybe"), "cudagraph='maybe' is not allowed: use auto, true or false"),
    pytest.param(dict(device="cuda"), "torch sees no CUDA device", marks=NO_CUDA),
    (dict(tp=3), r"tp=3 does not divide this model's num_attention_heads=4, num_key_value_heads=2, "
                 r"intermediate_size=128; .* \(tp in \[1, 2\] works\)"),
    (dict(dtype="float64"), "dtype='float64' is not allowed: use auto, float32, bfloat16 or float16"),
    (dict(forward={"name": "eager", "onednn": True}, dtype="bfloat16", device="cpu"),
     "forward.onednn=true packs float32 weights .* bfloat16 on cpu"),
    (dict(forward={"name": "eager", "onednn": "maybe"}), "forward.onednn='maybe' is not allowed: use auto, true or false"),
    (dict(attention="cpu", dtype="bfloat16", device="cpu"), "decode kernel is float32 only.*dtype=float32"),
    (dict(forward="fused_cpu", attention="sdpa"), "forward=fused_cpu cannot run here: it computes attention=cpu's "
                                                    "kernel and this run chose attention=sdpa; use forward=eager"),
    (dict(forward="fused_cpu", tp=2), "forward=fused_cpu cannot run here: it runs one process and this run has tp=2"),
    (dict(forward="fused_cpu", compile=True), "forward=fused_cpu cannot run here: compile=true compiles the torch "
                                              "modules, which it does not run"),
    (dict(forward={"name": "fused_cpu", "max_prefill_context": -1}), "forward.max_prefill_context=-1 is not allowed"),
    (dict(max_num_batched_tokens=32, max_model_len=64), "must be >= max_model_len"),
])
def test_switches_that_cannot_run_here(tiny_qwen3_path, overrides, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        LLM(tiny_qwen3_path, **overrides)


def test_unknown_top_level_key(tiny_qwen3_path):
    with pytest.raises(ConfigError, match="max_num_seq"):
        LLM(tiny_qwen3_path, max_num_seq=4)
