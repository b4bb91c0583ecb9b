"""quantization=int8 and int4: weight-only, quantized at load from a float checkpoint (the linear
layers, a mixture of experts' router and each of its experts), per group of 32 weights along k:
int8 symmetric (like GGUF Q8_0), int4 with a scale and a minimum (like Q4_1). The embedding table
and the LM head are int8 in both, as llama.cpp keeps them Q8_0 in its 4-bit files too (base.py).
Activations and sums stay in `dtype`, unless quantization.activations=int8 (int8 only):
forward=fused_cpu then quantizes each row of activations to int8 and sums int8 x int8 products (the
attention's and dense MLP's layers; a mixture of experts' router and experts, and the LM head, keep
float activations)."""
from dataclasses import dataclass

from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl
from nvllm.models.layers.moe import FusedMoE
from nvllm.models.layers.packed import GROUP, quantize_int4, quantize_int8
from nvllm.quantization.base import QuantizationMethod, linear_layers, pack_embeddings


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
    """Weight-only int8, symmetric per group of 32 along k (like GGUF Q8_0: 8.5 bits a weight); activations=int8: int8 x int8 products (fused_cpu)."""

    name = "int8"
    ACTIVATIONS = ("float", "int8")

    @dataclass
    class Config:
        name: str = "int8"
        # what the linear layers multiply the int8 weights by: float (the activations in dtype, the
        # weights dequantized: exact), or int8 (each row of activations rounded to int8 with one
        # scale, max |x| / 127, and int8 x int8 products summed in int32: VNNI's vpdpbusd where the
        # CPU has it; it changes the numerics, so it is never the default; forward=fused_cpu only)
        activations: str = "float"

        def __post_init__(self):
            if self.activations not in Int8.ACTIVATIONS:
                raise ConfigError(f"quantization.activations={self.activations!r} is not allowed: use "
                                  f"{' or '.join(Int8.ACTIVATIONS)}")

    @classmethod
    def check_forward(cls, forward: str, config=None) -> None:
        super().check_forward(forward, config)
        if config is not None and config.activations == "int8" and forward != "fused_cpu":
            raise ConfigError(f"quantization.activations=int8 multiplies int8 activations in forward=fused_cpu's C "
                              f"step only, not forward={forward}; use forward=fused_cpu (or auto) on a CPU, or "
                              f"quantization.activations=float")


class Int4(WeightOnly):
    """Weight-only 4-bit, per group of 32 along k with a scale and a minimum (like GGUF Q4_1: 5 bits a weight)."""

    name = "int4"
    pack = staticmethod(quantize_int4)
    group_bytes = GROUP // 2 + 4

    @dataclass
    class Config:
        name: str = "int4"


@hookimpl
def register_quantizations(register):
    register(Int8)
    register(Int4)
