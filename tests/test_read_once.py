"""Configuration is resolved once, at the edge: `LLM(...)` and `python -m nvllm.run` read the
checkpoint's config.json and its tokenizer once per run (transformers' own loaders, counted and still
run) and hand them to the engine, which reads neither again."""
import pytest
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer

from nvllm import LLM, SamplingParams


@pytest.fixture
def reads(monkeypatch) -> dict[str, list[str]]:
    """The directories AutoTokenizer.from_pretrained and AutoConfig.from_pretrained are called with,
    from now to the end of the test."""
    calls = {"tokenizer": [], "config": []}
    for key, cls in (("tokenizer", AutoTokenizer), ("config", AutoConfig)):
        def from_pretrained(path, *args, _original=cls.from_pretrained, _calls=calls[key], **kwargs):
            _calls.append(str(path))
            return _original(path, *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    return calls


def test_llm_reads_the_checkpoint_once(reads, tiny_text_path):
    with LLM(tiny_text_path, max_model_len=64) as llm:
        out = llm.generate(["the cat sat"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                           use_tqdm=False)
        assert llm.get_tokenizer() is not None and llm.engine.tokenizer is llm.get_tokenizer()
    assert len(out[0].outputs[0].token_ids) == 4 and out[0].outputs[0].text
    assert reads == {"tokenizer": [tiny_text_path], "config": [tiny_text_path]}


def test_a_run_reads_the_checkpoint_once(reads, tiny_text_path):
    """`python -m nvllm.run`'s run: the workload's prompts go through the same tokenizer the engine
    detokenises with."""
    from nvllm.config import compose
    from nvllm.run import run

    cfg = compose(model=tiny_text_path, max_model_len=256, sampling={"max_tokens": 4, "ignore_eos": True},
                  print_outputs=False)
    assert cfg.workload.name == "chat"  # it applies the chat template: the tokenizer is used before the engine
    metrics = run(cfg, OmegaConf.to_container(cfg, resolve=True))
    assert metrics["status"] == "ok", metrics
    assert reads == {"tokenizer": [tiny_text_path], "config": [tiny_text_path]}


def test_a_simulated_run_loads_no_tokenizer(reads, tiny_llama_path):
    with LLM(tiny_llama_path, forward="simulated", max_model_len=64) as llm:
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2, ignore_eos=True), use_tqdm=False)
    assert reads == {"tokenizer": [], "config": [tiny_llama_path]}
