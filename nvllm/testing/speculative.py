"""DrafterSuite: with the drafter on, greedy tokens stay transformers' and seeded samples stay
what speculative=none draws, under prefix caching, preemption and chunked prefill."""
import random

import pytest

from nvllm.errors import ConfigError
from nvllm.sampling_params import SamplingParams

from nvllm.testing.common import ComponentSuite
from nvllm.testing.model import hf_greedy

SCENARIOS = {  # engine overrides: a roomy cache, one small enough to preempt, prompts split into chunks,
    # priorities (preempting the least urgent) in a small cache
    "roomy": {},
    "preempting": {"kv_cache": {"block_size": 8, "num_blocks": 14}},
    "chunked": {"scheduler": "chunked", "max_num_batched_tokens": 32},
    "priority": {"scheduler": "priority", "kv_cache": {"block_size": 8, "num_blocks": 14}},
}


class DrafterSuite(ComponentSuite):
    """On a tiny random-weight checkpoint of `model` whose greedy output both repeats itself and
    moves on (so drafts are accepted and rejected), a mixed batch (prompts of 1 to 60 tokens, two
    sharing a prefix, some repeating a pattern): greedy tokens equal transformers' with a roomy
    cache, with a cache small enough to force preemption, with chunked prefill and with priority
    scheduling, and every block is free at the end; every proposal fits the slots reserved for it
    (and comes for a sequence whose last token alone is uncomputed); seeded temperature sampling
    gives exactly the tokens speculative=none gives; `check` raises only ConfigError."""

    family = "speculative"
    # architecture of the test checkpoint (a registered model with a "tiny" random preset)
    model: str = "qwen3"
    # make_random_checkpoint overrides: larger random weights than transformers' default, whose
    # tiny models only ever repeat one token
    checkpoint_overrides: dict = {"initializer_range": 0.1}
    # engine overrides every run gets (e.g. {"attention": "sdpa"})
    overrides: dict = {}
    max_new_tokens: int = 24

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory) -> str:
        from nvllm.tools.checkpoint import make_random_checkpoint

        return make_random_checkpoint(cls.model, str(tmp_path_factory.mktemp(f"drafter-{cls.name}")), preset="tiny",
                                      seed=0, **cls.checkpoint_overrides)

    @staticmethod
    def prompts() -> list[list[int]]:
        rng = random.Random(0)
        pattern = [rng.randrange(512) for _ in range(7)]
        prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 5, 23, 40)]
        prompts += [pattern * 4, pattern * 2 + pattern[:3], prompts[3][:32] + [1, 2, 3]]  # the last: a prefix hit
        return prompts

    @pytest.fixture(scope="class")
    @classmethod
    def reference(cls, checkpoint) -> list[list[int]]:
        return hf_greedy(checkpoint, cls.prompts(), cls.max_new_tokens)

    def _llm(self, checkpoint, config_fields, **overrides):
        from nvllm import LLM

        return LLM(checkpoint, speculative={"name": self.name, **config_fields},
                   **{"kv_cache": {"block_size": 8}, "max_model_len": 128, **self.overrides, **overrides})

    @pytest.mark.parametrize("scenario", list(SCENARIOS))
    def test_greedy_matches_transformers(self, config_fields, checkpoint, reference, scenario):
        greedy = SamplingParams(temperature=0, max_tokens=self.max_new_tokens, ignore_eos=True)
        with self._llm(checkpoint, config_fields, **SCENARIOS[scenario]) as llm:
            engine = llm.engine
            propose = engine.drafter.propose

            def checked(seqs, slots):
                proposals = propose(seqs, slots)
                assert len(proposals) == len(seqs) == len(slots)
                for seq, n, tokens in zip(seqs, slots, proposals):
                    assert len(seq) - seq.num_computed_tokens == 1, "drafting for a sequence mid-prefill"
                    assert len(tokens) <= n, "more drafts than slots reserved"
                return proposals

            engine.drafter.propose = checked
            priorities = [i % 3 for i in range(len(self.prompts()))] if scenario == "priority" else None
            got = [o.outputs[0].token_ids for o in llm.generate(self.prompts(), greedy, use_tqdm=False, priorities=priorities)]
            if scenario in ("preempting", "priority"):
                assert engine.scheduler.num_preemptions > 0, "the small cache forced no preemption"
            assert engine.kv_cache.num_free_blocks == engine.kv_cache.num_blocks, "blocks leaked"
            stats = engine.stats.spec_decode  # None: speculative=none
            if stats is not None:
                assert stats.num_accepted_tokens <= stats.num_draft_tokens
                per_pos = stats.num_accepted_tokens_per_pos
                assert sum(per_pos) == stats.num_accepted_tokens and all(a >= b for a, b in zip(per_pos, per_pos[1:]))
        assert got == reference

    def test_seeded_sampling_draws_what_no_speculation_draws(self, config_fields, checkpoint):
        from nvllm import LLM

        params = [SamplingParams(temperature=t, top_k=k, seed=s, max_tokens=self.max_new_tokens, ignore_eos=True)
                  for t, k, s in ((0.3, 0, 1), (0.8, 5, 2), (1.5, 0, 3), (0.3, 0, 4), (0.8, 0, 5), (0.0, 0, 6), (0.5, 3, 7))]
        with self._llm(checkpoint, config_fields) as llm:
            got = [o.outputs[0].token_ids for o in llm.generate(self.prompts(), params, use_tqdm=False)]
        with LLM(checkpoint, **{"kv_cache": {"block_size": 8}, "max_model_len": 128, **self.overrides}) as llm:
            want = [o.outputs[0].token_ids for o in llm.generate(self.prompts(), params, use_tqdm=False)]
        assert got == want

    def test_check_refuses_with_a_config_error(self, config, checkpoint):
        """check() passes or raises ConfigError on the test checkpoint, on CPU and CUDA targets."""
        import torch
        from transformers import AutoConfig

        from nvllm import registry
        from nvllm.forward.base import ForwardTarget

        hf_config = AutoConfig.from_pretrained(checkpoint)
        for device in ("cpu", "cuda"):
            for tp in (1, 2):
                target = ForwardTarget(torch.device(device), torch.float32, tp, registry.get("model", self.model),
                                       "sdpa", False)
                try:
                    self.component.check(config, hf_config, target)
                except ConfigError:
                    pass
