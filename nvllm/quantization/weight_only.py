"""quantization=int8 and int4: weight-only, quantized at load from a float checkpoint (the linear
layers, a mixture of experts' router and each of its experts), per group of 32 weights along k:
int8 symmetric (like GGUF Q8_0), int4 with a scale and a minimum (like Q4_1). The embedding table
and the LM head are int8 in both, as llama.cpp keeps them Q8_0 in its 4-bit files too (base.py).
Activations and sums stay in `dtype`, unless quantization.activations=int8 (base.py ACTIVATIONS):
forward=fused_cpu then rounds each block of 32 of the activations to int8 and sums integer products
(the attention's and dense MLP's layers and the LM head; a mixture of experts' router and experts
keep float activations)."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.models.layers.moe import FusedMoE
from nvllm.models.layers.packed import GROUP, quantize_int4, quantize_int8
from nvllm.quantization.base import QuantizationMethod, check_activations, linear_layers, pack_embeddings


class WeightOnly(QuantizationMethod):
    # float [N, K] weight -> the packed layout's tensors
    pack = staticmethod(quantize_int8)
    # bytes of one group of GROUP weights: the values, a float16 scale (and, int4, a float16 minimum)
    group_bytes = GROUP + 2

    @classmethod
    def bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        return cls.group_bytes / GROUP

    @classmethod
    def embedding_bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        return Int8.group_bytes / GROUP  # the table is int8 in both formats

    def apply(self, model, path: str) -> None:
        for name, module in linear_layers(model):
            k = module.weight.shape[1]
            if k % GROUP:  # Config.resolve refuses the known layers; this names any other
                raise ValueError(f"quantization={self.name}: {name} has k={k}, not a multiple of {GROUP}; "
                                 f"use quantization=none")
            module.quantize(self.pack(module.weight.float()))
        for name, module in model.named_modules():  # a mixture of experts' experts (the router is a linear layer)
            if isinstance(module, FusedMoE):
                for w in (module.w13, module.w2):
                    if w.shape[2] % GROUP:
                        raise ValueError(f"quantization={self.name}: {name}'s experts have k={w.shape[2]}, not a "
                                         f"multiple of {GROUP}; use quantization=none")
                module.quantize(self.pack)
        pack_embeddings(model, lambda name, module: quantize_int8(module.weight.float()))


class Int8(WeightOnly):
    """Weight-only int8, symmetric per group of 32 along k (like GGUF Q8_0: 8.5 bits a weight)."""

    name = "int8"

    @dataclass
    class Config:
        name: str = "int8"
        activations: str = "float"  # float (exact), or int8 (fused_cpu: llama.cpp's arithmetic; base.py ACTIVATIONS)

        __post_init__ = check_activations


class Int4(WeightOnly):
    """Weight-only 4-bit, per group of 32 along k with a scale and a minimum (like GGUF Q4_1: 5 bits a weight)."""

    name = "int4"
    pack = staticmethod(quantize_int4)
    group_bytes = GROUP // 2 + 4

    @dataclass
    class Config:
        name: str = "int4"
        activations: str = "float"  # float (exact), or int8 (fused_cpu: llama.cpp's arithmetic; base.py ACTIVATIONS)

        __post_init__ = check_activations


@hookimpl
def register_quantizations(register):
    register(Int8)
    register(Int4)
