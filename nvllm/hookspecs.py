"""The hooks a plugin may implement. Hooks only register: each receives the family's `register`
and calls it with component classes, each carrying a string `name` and a `Config` dataclass."""
import pluggy

hookspec = pluggy.HookspecMarker("nvllm")
hookimpl = pluggy.HookimplMarker("nvllm")


@hookspec
def register_models(register):
    """Register model architectures: subclasses of ``nvllm.models.base.CausalLM``."""


@hookspec
def register_schedulers(register):
    """Register scheduler policies: subclasses of ``nvllm.scheduler.base.Scheduler``."""


@hookspec
def register_kv_caches(register):
    """Register KV cache allocators: subclasses of ``nvllm.kv_cache.base.KVCacheAllocator``."""


@hookspec
def register_attention_backends(register):
    """Register attention backends: subclasses of ``nvllm.attention.base.AttentionBackend``."""


@hookspec
def register_samplers(register):
    """Register samplers: subclasses of ``nvllm.sampler.base.Sampler``."""


@hookspec
def register_forward_strategies(register):
    """Register ways of running a step's forward pass: subclasses of ``nvllm.forward.base.ForwardStrategy``."""


@hookspec
def register_workloads(register):
    """Register workloads (what a run sends, datasets included): subclasses of ``nvllm.workloads.Workload``."""


@hookspec
def register_drafters(register):
    """Register speculative-decoding drafters: subclasses of ``nvllm.speculative.base.Drafter``."""


@hookspec
def register_quantizations(register):
    """Register weight formats: subclasses of ``nvllm.quantization.base.QuantizationMethod``."""
