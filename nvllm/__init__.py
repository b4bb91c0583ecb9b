"""nvllm: a small LLM inference engine assembled by Hydra from pluggable components."""
from nvllm.hookspecs import hookimpl
from nvllm.llm import LLM
from nvllm.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "hookimpl"]
