"""A sampler that fails on purpose for one request (issue 23's fault-isolation tests): the default
sampler, except that a step holding a request with seed FAULT_SEED that has generated FAULT_AT tokens
raises, and one with seed INTERRUPT_SEED is interrupted there as by Ctrl-C (a real SIGINT). Greedy
requests ignore their seed, so a greedy request is marked by its seed alone. The engine tests
register it in-process (`register_in_process`); the server's tests install this file as an
entry-point plugin."""
import signal
from dataclasses import dataclass

from nvllm import hookimpl
from nvllm.sampler.default import DefaultSampler

FAULT_SEED, INTERRUPT_SEED, FAULT_AT = 4242, 4243, 2


class FaultySampler(DefaultSampler):
    name = "faulty"

    @dataclass
    class Config:
        name: str = "faulty"

    def __call__(self, logits, seqs):
        for seq in seqs:
            if seq.num_completion_tokens == FAULT_AT and seq.sampling_params.seed == FAULT_SEED:
                raise RuntimeError(f"injected fault for request {seq.request_id}")
            if seq.num_completion_tokens == FAULT_AT and seq.sampling_params.seed == INTERRUPT_SEED:
                signal.raise_signal(signal.SIGINT)
        return super().__call__(logits, seqs)


@hookimpl
def register_samplers(register):
    register(FaultySampler)


def register_in_process():
    """What `nvllm.config.setup()` does for an installed plugin, for this one class in this process."""
    from hydra.core.config_store import ConfigStore

    from nvllm import registry
    from nvllm.config import setup

    setup()
    registry.register("sampler", FaultySampler, "tests")
    ConfigStore.instance().store(group="sampler", name="faulty", node=FaultySampler.Config(), provider="tests")
