"""quantization=int8 and int4: weight-only, quantized at load from a float checkpoint, per group
of 32 weights along k: int8 symmetric (like GGUF Q8_0), int4 with a scale and a minimum (like
Q4_1). Activations and sums stay in `dtype`."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.models.layers.packed import GROUP, quantize_int4, quantize_int8
from nvllm.quantization.base import QuantizationMethod, linear_layers


class WeightOnly(QuantizationMethod):
    # float [N, K] weight -> the packed layout's tensors
    pack = staticmethod(quantize_int8)
    # bytes of one group of GROUP weights: the values, a float16 scale (and, int4, a float16 minimum)
    group_bytes = GROUP + 2

    @classmethod
    def bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        return cls.group_bytes / GROUP

    def apply(self, model, path: str) -> None:
        for name, module in linear_layers(model):
            k = module.weight.shape[1]
            if k % GROUP:  # Config.resolve refuses the known layers; this names any other
                raise ValueError(f"quantization={self.name}: {name} has k={k}, not a multiple of {GROUP}; "
                                 f"use quantization=none")
            module.quantize(self.pack(module.weight.float()))


class Int8(WeightOnly):
    """Weight-only int8, symmetric per group of 32 along k (like GGUF Q8_0: 8.5 bits a weight)."""

    name = "int8"

    @dataclass
    class Config:
        name: str = "int8"


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
