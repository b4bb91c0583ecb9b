"""Conformance suites, one per component family, that a plugin's tests subclass (the way Hydra's
launcher plugins subclass `LauncherTestSuite`). Set `name`; pytest runs the family's contract:

    from nvllm.testing import SchedulerSuite

    class TestMyPolicy(SchedulerSuite):
        name = "my_policy"
        configs = [{}, {"max_skips": 2}]  # Config fields; every test runs once per entry

The component is looked up by name after `load_plugins()`, so the suites also prove that the
package's entry point registers it. Needs pytest (nvllm's `dev` extra)."""
from nvllm.testing.attention import ATTENTION_CASES, AttentionSuite, attention_metadata, paged_block_tables
from nvllm.testing.common import ComponentSuite
from nvllm.testing.forward import ForwardSuite
from nvllm.testing.kv_cache import KVCacheSuite
from nvllm.testing.model import ModelSuite, hf_greedy, hf_reference, parity_mismatches, strategies_for
from nvllm.testing.quantization import QuantizationSuite, write_gguf
from nvllm.testing.sampler import SamplerSuite
from nvllm.testing.scheduler import SchedulerSuite, Workload
from nvllm.testing.speculative import DrafterSuite
from nvllm.testing.workload import WorkloadSuite

__all__ = ["ATTENTION_CASES", "AttentionSuite", "ComponentSuite", "DrafterSuite", "ForwardSuite", "KVCacheSuite", "ModelSuite", "QuantizationSuite", "SamplerSuite",
           "SchedulerSuite", "Workload", "WorkloadSuite", "attention_metadata", "hf_greedy", "hf_reference", "paged_block_tables", "parity_mismatches",
           "strategies_for", "write_gguf"]
