"""WorkloadSuite: a workload (nvllm.workloads.Workload) makes the same requests from the same
config, one SamplingParams per prompt, prompts a model can take, arrivals that start at 0 and never
go back, and it refuses what cannot run in `check` (before the model loads)."""
import pytest

from nvllm.sampling_params import SamplingParams
from nvllm.testing.common import ComponentSuite
from nvllm.workloads import Workload

SAMPLING = {"temperature": 0.0, "max_tokens": 16}


class WorkloadSuite(ComponentSuite):
    """Set `name` and `configs` (fields such as a `path` to a file the test writes: `setup_files`
    may write them first). `tokenizer()` is SmolLM2's (chat template included); override it for a
    workload that needs another."""

    family = "workload"
    vocab: int = 49152

    def setup_files(self, tmp_path) -> dict:
        """Config fields that point at files written under `tmp_path` (a dataset's sample)."""
        return {}

    def tokenizer(self):
        from transformers import AutoTokenizer

        from nvllm.models.weights import smollm2_path

        return AutoTokenizer.from_pretrained(smollm2_path())

    @pytest.fixture
    def workload(self, config_fields, tmp_path) -> Workload:
        cls = self.component
        return cls(cls.Config(**{**config_fields, **self.setup_files(tmp_path)}))

    def requests(self, workload):
        tokenizer = self.tokenizer()
        workload.check(tokenizer)
        return workload.requests(SAMPLING, tokenizer)

    def test_config_convention(self, config_fields, tmp_path):
        super().test_config_convention({**config_fields, **self.setup_files(tmp_path)})

    def test_one_sampling_params_per_prompt(self, workload):
        prompts, params = self.requests(workload)
        assert prompts and len(prompts) == len(params)
        assert all(isinstance(p, SamplingParams) for p in params)

    def test_prompts_a_model_takes(self, workload):
        prompts, _ = self.requests(workload)
        for p in prompts:
            assert (isinstance(p, str) and p) or (isinstance(p, list) and p and all(
                isinstance(t, int) and 0 <= t < self.vocab for t in p)), f"not a prompt: {p!r:.80}"

    def test_same_config_same_requests(self, workload):
        prompts, params = self.requests(workload)
        again, again_params = self.requests(type(workload)(workload.config))
        assert prompts == again and [p.max_tokens for p in params] == [p.max_tokens for p in again_params]

    def test_arrivals_start_at_zero_and_never_go_back(self, workload):
        prompts, _ = self.requests(workload)
        arrivals = workload.arrivals(len(prompts))
        if arrivals is not None:
            assert len(arrivals) == len(prompts) and arrivals[0] == 0
            assert all(b >= a for a, b in zip(arrivals, arrivals[1:]))
