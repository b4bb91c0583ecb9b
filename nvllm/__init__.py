"""nvllm: a small LLM inference engine assembled by Hydra from pluggable components."""
from nvllm.engine.llm_engine import LLMEngine
from nvllm.engine.outputs import RequestDelta, RequestOutput
from nvllm.hookspecs import hookimpl
from nvllm.llm import LLM
from nvllm.sampling_params import SamplingParams

__all__ = ["LLM", "LLMEngine", "RequestDelta", "RequestOutput", "SamplingParams", "hookimpl"]
