"""forward=eager: the model's torch modules, one call per layer operation, with the attention
backend reading and writing the paged cache. Runs everywhere; the other strategies fall back to
it for the steps they do not take (cudagraph: prefills and batches past its largest graph;
fused_cpu: long prefills).

Its options: `compile=true` (an engine switch) torch.compile's the hot elementwise pieces of the
layers (`compile_hot_path`); `forward.onednn` lays the float32 linear weights out once in
oneDNN's blocked format for CPU matmuls (`pack_weights`)."""
from dataclasses import dataclass, replace
from typing import Any

import torch

from nvllm.attention.base import forward_context
from nvllm.auto import tristate
from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardStrategy, ForwardTarget, logits_rows, model_kwargs
from nvllm.hookspecs import hookimpl


def onednn_runs(target: ForwardTarget) -> bool:
    return (target.device.type == "cpu" and target.dtype == torch.float32 and target.quantization == "none"
            and torch.backends.mkldnn.is_available())


class EagerForward(ForwardStrategy):
    """The model's torch modules, layer by layer; runs everywhere (options: compile, forward.onednn)."""

    name = "eager"
    auto_rank = {"cuda": 1, "cpu": 1}

    @dataclass
    class Config:
        name: str = "eager"
        # CPU float32 linears through oneDNN, weights packed once: auto (on where it can run), true, false
        onednn: Any = "auto"

        def __post_init__(self):
            self.onednn = tristate("forward.onednn", self.onednn)

    @classmethod
    def resolve(cls, config, target: ForwardTarget):
        if not hasattr(config, "onednn"):  # a strategy built on this one, without the option
            return config
        if config.onednn and not onednn_runs(target):
            raise ConfigError(f"forward.onednn=true packs float32 weights for CPU matmuls and this run is "
                              f"{str(target.dtype).removeprefix('torch.')} on {target.device.type}"
                              f"{'' if target.quantization == 'none' else f' with quantization={target.quantization}'}"
                              f"{'' if torch.backends.mkldnn.is_available() else ' with a torch built without oneDNN'}; "
                              f"use forward.onednn=false or auto")
        return replace(config, onednn=onednn_runs(target) if config.onednn is None else config.onednn)

    def __init__(self, config, runner):
        super().__init__(config, runner)
        for module in self.model.modules():
            if getattr(config, "onednn", False) and hasattr(module, "pack_weights"):
                module.pack_weights()
            if runner.config.compile and hasattr(module, "compile_hot_path"):
                module.compile_hot_path()

    def __call__(self, input_ids, positions, meta):
        self.runner.attention.prepare(meta, self.runner.block_size)
        with forward_context(self.runner.attention, meta):
            hidden = self.model(input_ids, positions, **model_kwargs(meta))
        return self.model.compute_logits(hidden[logits_rows(meta)])


@hookimpl
def register_forward_strategies(register):
    register(EagerForward)
