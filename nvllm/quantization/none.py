"""quantization=none: every weight in `dtype`."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.quantization.base import QuantizationMethod


class NoQuantization(QuantizationMethod):
    """Weights in dtype (the default); every forward strategy runs it."""

    name = "none"
    forwards = None

    @dataclass
    class Config:
        name: str = "none"


@hookimpl
def register_quantizations(register):
    register(NoQuantization)
