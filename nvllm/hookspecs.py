"""The hooks a plugin may implement. Hooks only register: each receives the family's `register`."""
import pluggy

hookspec = pluggy.HookspecMarker("nvllm")
hookimpl = pluggy.HookimplMarker("nvllm")


@hookspec
def register_models(register):
    """Register model architectures: ``register(cls)`` with ``cls.name`` and ``cls.Config``."""


@hookspec
def register_schedulers(register):
    """Register scheduler policies: ``register(cls)`` with ``cls.name`` and ``cls.Config``."""


@hookspec
def register_kv_caches(register):
    """Register KV cache allocators: ``register(cls)`` with ``cls.name`` and ``cls.Config``."""


@hookspec
def register_attention_backends(register):
    """Register attention backends: ``register(cls)`` with ``cls.name`` and ``cls.Config``."""


@hookspec
def register_samplers(register):
    """Register samplers: ``register(cls)`` with ``cls.name`` and ``cls.Config``."""
