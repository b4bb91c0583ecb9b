"""forward=fused_cpu runs only what an architecture declares in its own class body: a model plugin
that subclasses LlamaForCausalLM and changes its arithmetic (here: logits scaled and negated, as a
Granite-style multiplier would) is run through its own torch modules under forward=auto, and
refused by name under forward=fused_cpu, never silently given Llama's arithmetic."""
import random
from dataclasses import dataclass

import pytest

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
from nvllm.models.base import ModelConfig, fused_layout
from nvllm.models.llama import LlamaForCausalLM
from nvllm.models.qwen3 import Qwen3ForCausalLM


class NegatedLlama(LlamaForCausalLM):
    """Llama with its logits multiplied by -0.5: the most likely token becomes the least."""

    name = "negated_llama"

    @dataclass
    class Config(ModelConfig):
        name: str = "negated_llama"

    def compute_logits(self, hidden_states):
        logits = super().compute_logits(hidden_states)
        return None if logits is None else logits * -0.5


@pytest.fixture(scope="module")
def negated_registered():
    """What `nvllm.config.setup()` does for an installed model plugin, for this class in this process."""
    from hydra.core.config_store import ConfigStore

    from nvllm import registry
    from nvllm.config import setup

    setup()
    if NegatedLlama.name not in registry.names("model"):
        registry.register("model", NegatedLlama, "tests")
        ConfigStore.instance().store(group="model", name=NegatedLlama.name, node=NegatedLlama.Config(), provider="tests")


def test_the_layout_is_declared_not_inherited():
    assert fused_layout(LlamaForCausalLM) == fused_layout(Qwen3ForCausalLM) == "llama"
    assert fused_layout(NegatedLlama) is None


def test_a_subclass_that_changes_arithmetic_runs_its_own_modules(negated_registered, tiny_llama_path):
    rng = random.Random(4)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (3, 11, 20)]
    greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    model = {"name": "negated_llama", "path": tiny_llama_path}
    with LLM(model) as llm:
        config = llm.engine.config
        assert config.forward.name == "eager" and "passed over fused_cpu" in config.forward_choice
        assert "does not declare" in config.forward_choice
        auto = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    with LLM(model, forward="eager") as llm:
        eager = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    with LLM(tiny_llama_path) as llm:  # plain Llama, through the C step
        assert llm.engine.config.forward.name == "fused_cpu"
        plain = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    assert auto == eager and auto != plain


def test_naming_fused_cpu_for_it_is_refused_by_name(negated_registered, tiny_llama_path):
    with pytest.raises(ConfigError, match=r"forward=fused_cpu cannot run here: model=negated_llama \(NegatedLlama\) "
                                          r"does not declare"):
        LLM({"name": "negated_llama", "path": tiny_llama_path}, forward="fused_cpu")
