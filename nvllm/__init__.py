"""nvllm: a small LLM inference engine assembled by Hydra from pluggable components."""
from nvllm.kernels.threads import set_wait_policy

set_wait_policy()  # first: it imports torch, whose OpenMP runtime reads the wait policy as it loads
from nvllm.engine.llm_engine import LLMEngine  # noqa: E402
from nvllm.engine.outputs import RequestDelta, RequestOutput  # noqa: E402
from nvllm.hookspecs import hookimpl  # noqa: E402
from nvllm.llm import LLM  # noqa: E402
from nvllm.sampling_params import SamplingParams  # noqa: E402

__all__ = ["LLM", "LLMEngine", "RequestDelta", "RequestOutput", "SamplingParams", "hookimpl"]
