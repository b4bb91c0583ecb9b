"""quantization=none: every weight in `dtype`."""
from dataclasses import dataclass

from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl
from nvllm.quantization.base import QuantizationMethod, check_activations


class NoQuantization(QuantizationMethod):
    """Weights in dtype (the default); every forward strategy runs it."""

    name = "none"
    forwards = None

    @dataclass
    class Config:
        name: str = "none"
        # float only: int8 activations multiply a packed format's weights (a sweep over
        # quantization x quantization.activations gets this refusal, not an unknown key)
        activations: str = "float"

        def __post_init__(self):
            check_activations(self)  # an unknown value: refused naming the allowed ones
            if self.activations != "float":
                raise ConfigError(f"quantization.activations={self.activations!r} rounds the activations a packed "
                                  f"format's weights multiply, and quantization=none packs none: use "
                                  f"quantization=int8, int4 or gguf with it, or quantization.activations=float")


@hookimpl
def register_quantizations(register):
    register(NoQuantization)
