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
    (dict(temperature=10**400), "temperature must be a number within float range, got 1000"),
    (dict(repetition_penalty=-10**400), "repetition_penalty must be a number within float range"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(ignore_eos="yes"), "ignore_eos must be True or False, got 'yes'"),
    (dict(ignore_eos=1), "ignore_eos must be True or False, got 1"),
    (dict(stop_token_ids=[2**63]), r"stop_token_ids must be a list of token ids \(integers in \[0, 2\*\*63\)\)"),
    (dict(stop=[b"x"]), "stop must be a string or a list of non-empty strings"),
    (dict(stop=5), "stop must be a string or a list of non-empty strings, got 5"),
    (dict(stop_token_ids=7), r"stop_token_ids must be a list of token ids .*got 7"),
    (dict(n="2"), "n must be an integer, got '2'"),
    (dict(n=2**63), r"n must be an integer in \[1, 1024\]"),
    (dict(n=0), r"n must be an integer in \[1, 1024\]"),
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
    assert not llm.engine.has_unfinished_requests()  # nothing was queued


def test_values_of_the_right_type_and_range_pass():
    import numpy as np

    sp = SamplingParams(temperature=0, top_k=np.int64(5), max_tokens=np.int32(3), seed=2**64 - 1, top_p=np.float32(0.5),
                        stop_token_ids=(np.int64(7),))
    assert (sp.temperature, sp.top_k, sp.max_tokens, sp.stop_token_ids) == (0.0, 5, 3, [7])
    assert type(sp.top_k) is int and type(sp.temperature) is float and SamplingParams(seed=-2**63).seed == -2**63


@pytest.mark.parametrize("field, value, match", [
    ("n", 3_000_000, r"n must be an integer in \[1, 1024\]"),  # used to build a completion each until killed
    ("n", 5000, r"n must be an integer in \[1, 1024\]"),
    ("n", 0, r"n must be an integer in \[1, 1024\]"),
    ("top_k", 2**63, "top_k must be an integer"),
    ("stop", 5, "stop must be a string or a list"),
    ("temperature", "hot", "temperature must be a number"),
])
def test_params_changed_after_construction_are_checked_when_added(llm, field, value, match):
    """SamplingParams is a mutable dataclass: every add checks it again, whole, before anything is
    registered or allocated, and a change after the add never reaches the engine's copy."""
    engine = llm.engine
    params = SamplingParams(temperature=0.5, max_tokens=4)
    setattr(params, field, value)
    with pytest.raises(ValueError, match=match):
        engine.add_request("r", [1, 2, 3], params)
    assert not engine.has_unfinished_requests()
    with pytest.raises(ValueError, match=f"prompt 0: {match}"):
        llm.generate([[1, 2, 3], [4, 5, 6]], [params, GREEDY], use_tqdm=False)
    assert not engine.has_unfinished_requests()
    good = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    seq = engine.add_request("r", [1, 2, 3], good)
    setattr(good, field, value)  # after the add: the engine runs its own checked copy
    assert seq.sampling_params is not good and getattr(seq.sampling_params, field) != value
    while engine.has_unfinished_requests():
        engine.step()
    assert seq.num_completion_tokens == 8


def _engine_state(engine) -> tuple:
    return (engine.stats.steps, engine.kv_cache.num_free_blocks, engine.has_unfinished_requests(),
            len(engine.scheduler.waiting), len(engine.scheduler.running))


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[[5, 6, 7], []]), "prompt 1: empty prompt"),
    (dict(prompts=[[5, 6, 7], list(range(70))]), "prompt 1: prompt has 70 tokens; max_model_len=64"),
    (dict(prompts=[[5, 6, 7], {"prompt_token_ids": [1], "multi_modal_data": {}}]), "prompt 1: .*multi_modal_data"),
    (dict(prompts=[[5, 6, 7], 3.5]), "prompt 1: prompt must be a string, a list of token ids"),
    (dict(priorities=[0, "x"]), "prompt 1: priority must be an integer .* got 'x'"),
    (dict(priorities=[0, None]), "prompt 1: priority must be an integer .* got None"),
    (dict(priorities=[True, 0]), "prompt 0: priority must be an integer .* got True"),
    (dict(priorities=[0]), "priorities must be a list of integers, one per prompt"),
    (dict(sampling_params=[GREEDY, {"temperature": 0}]), "prompt 1: sampling_params must be a SamplingParams"),
    (dict(sampling_params=[GREEDY, SamplingParams(stop_token_ids=[600])]), "prompt 1: stop_token_ids must be below"),
    (dict(arrival_times=[0.0, float("inf")]), r"prompt 1: arrival_times\[1\] must be a number of seconds"),
    (dict(arrival_times=[0.0, "soon"]), r"prompt 1: arrival_times\[1\] must be"),
    (dict(max_concurrency=0), "max_concurrency must be an integer >= 1"),
    (dict(use_tqdm="no"), "use_tqdm must be True or False"),
])
def test_generate_with_one_bad_argument_raises_naming_it_and_runs_nothing(llm, kwargs, match):
    """vLLM's behaviour: every prompt and argument is checked before the first request is added; one
    bad one raises ValueError naming the prompt's index and the field, and the engine is untouched."""
    call = dict(prompts=[[5, 6, 7], [8, 9, 10, 11]], sampling_params=GREEDY, use_tqdm=False) | kwargs
    before = _engine_state(llm.engine)
    with pytest.raises(ValueError, match=match):
        llm.generate(**call)
    assert _engine_state(llm.engine) == before


@pytest.mark.parametrize("prompts, params, priorities, match", [
    ([[5, 6, 7], []], GREEDY, None, "prompt 1: empty prompt"),
    ([[5, 6, 7], [8]], GREEDY, [0, "x"], "prompt 1: priority must be an integer"),
    ([[5, 6, 7], [8]], [GREEDY, "top_k"], None, "prompt 1: top_k must be an integer"),
])
def test_stream_checks_every_prompt_when_called(llm, prompts, params, priorities, match):
    """The call raises, before any delta is asked for, and adds nothing."""
    if isinstance(params, list) and params[1] == "top_k":
        params[1] = SamplingParams()
        params[1].top_k = 2**63  # changed after construction
    before = _engine_state(llm.engine)
    with pytest.raises(ValueError, match=match):
        llm.stream(prompts, params, priorities)
    assert _engine_state(llm.engine) == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(arrival_time=float("inf")), "arrival_time must be a finite time on the engine's clock"),
    (dict(arrival_time=float("nan")), "arrival_time must be a finite time"),
    (dict(arrival_time="soon"), "arrival_time must be a finite time .* got 'soon'"),
    (dict(arrival_time=True), "arrival_time must be a finite time .* got True"),
    (dict(arrival_time=1e300), "arrival_time must be .* at most a week ahead"),
    (dict(priority="x"), "priority must be an integer .* got 'x'"),
    (dict(priority=None), "priority must be an integer .* got None"),
    (dict(priority=False), "priority must be an integer .* got False"),
    (dict(priority=1.5), "priority must be an integer .* got 1.5"),
    (dict(priority=2**63), "priority must be an integer in"),
    (dict(stream="yes"), "stream must be True or False"),
    (dict(request_id=7), "request_id must be a string, got 7"),
    (dict(request_id=["r"]), "request_id must be a string"),
    (dict(prompt={"text": "hi"}), "prompt must be a string, a list of token ids, .*nvllm does not take text"),
    (dict(prompt=None), "prompt must be a string"),
    (dict(sampling_params=None), "sampling_params must be a SamplingParams, got None"),
])
def test_add_request_checks_every_argument_before_registering(llm, kwargs, match):
    """Issue 32: an infinite or far-future arrival made every step raise OverflowError; a string
    arrival or priority raised TypeError after the request was registered, so generate refused
    until it was aborted."""
    import time

    if kwargs.get("arrival_time") == 1e300:
        kwargs["arrival_time"] = time.perf_counter() + 1e300
    call = dict(request_id="r", prompt=[1, 2, 3], sampling_params=GREEDY) | kwargs
    with pytest.raises(ValueError, match=match):
        llm.engine.add_request(**call)
    assert not llm.engine.has_unfinished_requests()
    assert len(llm.generate([[1, 2, 3]], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 8


def test_the_driver_behind_runs_rejects_one_request_and_runs_the_others(llm):
    """`nvllm run` counts refused requests instead (engine.generate, the driver under LLM.generate):
    a rejected request never costs the others their results."""
    good = [[5, 6, 7], [8, 9, 10, 11]]
    alone = llm.engine.generate(good, [GREEDY] * 2, use_tqdm=False)
    mixed = llm.engine.generate([good[0], [], good[1], list(range(70))], [GREEDY] * 4, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in (mixed[0], mixed[2])] == [o.outputs[0].token_ids for o in alone]
    assert mixed[1].outputs[0].finish_reason == "rejected" and "empty prompt" in mixed[1].error
    assert mixed[3].outputs[0].finish_reason == "rejected" and "max_model_len" in mixed[3].error
    assert all(len(o.outputs[0].token_ids) == 8 for o in alone)


def test_unknown_scheduler_lists_valid_names():
    with pytest.raises(ConfigError, match="scheduler='no-such-policy' is no scheduler option; the options are .*fcfs") as e:
        LLM(scheduler="no-such-policy")
    assert "\n" not in str(e.value) and e.value.__context__ is None


def test_unknown_name_in_registry():
    from nvllm import registry
    from nvllm.config import typed_config
    from nvllm.plugins import load_plugins

    load_plugins()
    with pytest.raises(UnknownComponentError, match=r"unknown scheduler 'nope'; valid names: .*fcfs"):
        registry.get("scheduler", "nope")
    with pytest.raises(UnknownComponentError, match=r"unknown model 'gpt9'; valid names: llama, .*qwen3, qwen3_moe"):
        typed_config("model", {"name": "gpt9"})


@pytest.mark.parametrize("model, match", [
    ("gpt9", "the options are llama, (mixtral, )?qwen2, qwen3, qwen3_moe, smollm2$"),  # mixtral: its plugin
    ("SmolLM2", "did you mean 'smollm2'"),  # issue 33: was 30 lines of Hydra's traceback
    ("smollm", "did you mean 'smollm2'"),
])
def test_unknown_model_option(model, match):
    with pytest.raises(ConfigError, match=f"model='{model}' is neither a model directory, a config option nor a "
                                         f"Hugging Face repo id .*{match}") as e:
        LLM(model)
    assert "\n" not in str(e.value) and e.value.__context__ is None


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
