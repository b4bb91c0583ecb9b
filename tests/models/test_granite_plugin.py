"""A model plugin written as a new user would: transformers' GraniteForCausalLM (Llama with four
scalar multipliers) as a subclass of nvllm's LlamaForCausalLM. ModelSuite passes it through every
forward strategy that accepts it (eager here; fused_cpu refuses it, since the class declares no
fused_step_layout: the C step would run plain Llama's arithmetic), and fails each variant that drops
one multiplier: the suite's weights make every term of the computation move the output."""
from dataclasses import dataclass, make_dataclass, field

import pytest

from nvllm import LLM
from nvllm.errors import ConfigError
from nvllm.models.base import ModelConfig, fused_layout
from nvllm.models.llama import LlamaForCausalLM
from nvllm.models.qwen3 import Qwen3ForCausalLM
from nvllm.testing import ModelSuite, parity_mismatches, strategies_for

MULTIPLIERS = ("embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling")


class GraniteForCausalLM(LlamaForCausalLM):
    """transformers' GraniteForCausalLM: the embeddings times `embedding_multiplier`, attention scores
    scaled by `attention_multiplier` (in place of head_dim^-0.5), each layer's attention and MLP output
    times `residual_multiplier` before it joins the residual stream, the logits over `logits_scaling`."""

    name = "granite"
    hf_model_types = ("granite",)
    hf_config_class = "GraniteConfig"
    # each multiplier a factor of 2 to 4 from its identity (1; head_dim^-0.5 = 0.25 for attention): far
    # enough that dropping it moves the output, near enough that no term swamps the others (Granite 3's
    # own 12 and 0.22 let the scaled embedding drown what the layers add to random weights)
    random_presets = {"tiny": {**LlamaForCausalLM.random_presets["tiny"], "embedding_multiplier": 3.0,
                               "attention_multiplier": 0.125, "residual_multiplier": 0.5, "logits_scaling": 4.0}}
    # the multiplier a broken variant leaves out (None: the real model)
    dropped: str | None = None

    @dataclass
    class Config(ModelConfig):
        name: str = "granite"

    def __init__(self, hf_config):
        super().__init__(hf_config)
        kept = {key: getattr(hf_config, key) for key in MULTIPLIERS if key != self.dropped}
        self.embedding_multiplier = kept.get("embedding_multiplier", 1.0)
        self.residual_multiplier = kept.get("residual_multiplier", 1.0)
        self.logits_scaling = kept.get("logits_scaling", 1.0)
        if "attention_multiplier" in kept:
            for layer in self.model.layers:
                layer.self_attn.attn.scale = kept["attention_multiplier"]

    def forward(self, input_ids, positions, num_layers=None):
        decoder = self.model
        residual = decoder.embed_tokens(input_ids) * self.embedding_multiplier
        for layer in decoder.layers[:num_layers]:
            hidden = layer.self_attn(positions, layer.input_layernorm(residual))
            residual = residual + hidden * self.residual_multiplier
            hidden = layer.mlp(layer.post_attention_layernorm(residual))
            residual = residual + hidden * self.residual_multiplier
        return decoder.norm(residual)

    def compute_logits(self, hidden_states):
        logits = super().compute_logits(hidden_states)
        return None if logits is None else logits / self.logits_scaling


def without(key: str) -> type:
    """A broken Granite: `key`'s multiplier read from the config and ignored."""
    name = f"granite_without_{key}"
    config = make_dataclass("Config", [("name", str, field(default=name))], bases=(ModelConfig,))
    return type(f"GraniteWithout_{key}", (GraniteForCausalLM,), {"name": name, "dropped": key, "Config": config})


BROKEN = {key: without(key) for key in MULTIPLIERS}


@pytest.fixture(scope="module", autouse=True)
def registered():
    """What `nvllm.config.setup()` does for an installed model plugin, for these classes in this
    process; undone afterwards (other tests in the process list the models)."""
    from hydra.core.config_store import ConfigStore

    from nvllm import registry
    from nvllm.config import setup

    setup()
    classes = (GraniteForCausalLM, *BROKEN.values())
    for cls in classes:
        registry.register("model", cls, "tests")
        ConfigStore.instance().store(group="model", name=cls.name, node=cls.Config(), provider="tests")
    yield
    for cls in classes:
        del registry._components["model"][cls.name], registry._origins["model", cls.name]
        del ConfigStore.instance().repo["model"][f"{cls.name}.yaml"]


class TestGranite(ModelSuite):
    name = "granite"


@pytest.fixture(scope="module")
def granite_checkpoint(tmp_path_factory):
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("granite", str(tmp_path_factory.mktemp("granite")), init="unit")


@pytest.mark.parametrize("key", MULTIPLIERS)
def test_the_suite_fails_a_variant_that_drops_a_multiplier(granite_checkpoint, key):
    mismatches = parity_mismatches(BROKEN[key].name, granite_checkpoint, forward="eager")
    assert mismatches, f"dropping {key} went unnoticed"
    assert all(line.startswith("forward=eager, prompt ") for line in mismatches)
    if key == "logits_scaling":  # a positive scale of the logits keeps every greedy token: the logprobs show it
        assert all("(greedy tokens equal)" in line for line in mismatches)


def test_the_layout_is_declared_not_inherited():
    assert fused_layout(LlamaForCausalLM) == fused_layout(Qwen3ForCausalLM) == "llama"
    assert fused_layout(GraniteForCausalLM) is None


def test_only_eager_accepts_it_on_a_cpu():
    reasons = strategies_for(GraniteForCausalLM, "cpu")
    assert reasons["eager"] is None
    assert "model=granite (GraniteForCausalLM) does not declare" in reasons["fused_cpu"]
    assert "CUDA" in reasons["cudagraph"]
    assert strategies_for(LlamaForCausalLM, "cpu")["fused_cpu"] is None


def test_auto_runs_its_own_modules_and_fused_cpu_refuses_it_by_name(granite_checkpoint):
    with LLM({"name": "granite", "path": granite_checkpoint}) as llm:
        config = llm.engine.config
        assert config.forward.name == "eager", config.forward_choice
        assert "passed over fused_cpu: model=granite (GraniteForCausalLM) does not declare" in config.forward_choice
    with pytest.raises(ConfigError, match=r"forward=fused_cpu cannot run here: model=granite \(GraniteForCausalLM\) "
                                          r"does not declare"):
        LLM({"name": "granite", "path": granite_checkpoint}, forward="fused_cpu")
