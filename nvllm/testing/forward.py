"""ForwardSuite: a forward strategy computes what forward=eager computes, step by step, and the
greedy tokens of whole runs equal transformers'."""
import random

import pytest
import torch

from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget
from nvllm.sampling_params import SamplingParams

from nvllm.testing.common import ComponentSuite
from nvllm.testing.model import hf_greedy


class ForwardSuite(ComponentSuite):
    """On a tiny random-weight checkpoint of `model`: one prefill step (prompts of several lengths,
    some with prefix-cache hits) and one decode step through the strategy give the logits and
    write the K/V that forward=eager gives and writes from the same cache; whole runs, batched,
    with prefix caching and with preemption forced by a small cache, give transformers' greedy
    tokens. `check` refuses a target it cannot run on with a ConfigError."""

    family = "forward"
    # architecture of the test checkpoint (a registered model with a "tiny" random preset)
    model: str = "qwen3"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    # engine overrides the strategy needs (e.g. {"attention": "cpu"})
    overrides: dict = {}
    # logits tolerance against eager (atol, rtol)
    tolerance: tuple = (1e-4, 1e-4)
    max_new_tokens: int = 10

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory) -> str:
        from nvllm.tools.checkpoint import make_random_checkpoint

        return make_random_checkpoint(cls.model, str(tmp_path_factory.mktemp(f"forward-{cls.name}")), preset="tiny",
                                      seed=0)

    def _skip_without_device(self):
        if self.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")

    def _llm(self, checkpoint, forward: dict, **overrides):
        from nvllm import LLM

        return LLM(checkpoint, forward=forward, device=self.device, dtype=str(self.dtype).removeprefix("torch."),
                   **{"kv_cache": {"block_size": 8}, "max_model_len": 128, "max_num_batched_tokens": 512,
                      **self.overrides, **overrides})

    def test_check_refuses_with_a_config_error(self):
        """check() either passes or raises ConfigError (never another exception) on any target."""
        from nvllm import registry

        for device in ("cpu", "cuda"):
            for dtype in (torch.float32, torch.bfloat16):
                for attention in ("sdpa", "cpu"):
                    target = ForwardTarget(torch.device(device), dtype, 1, registry.get("model", self.model),
                                           attention, False)
                    try:
                        self.component.check(target)
                    except ConfigError:
                        pass

    def test_steps_match_eager(self, config_fields, checkpoint):
        """A prefill step and a decode step: the strategy's logits and cache writes against eager's,
        from the same cache."""
        from nvllm.engine.model_runner import step_inputs
        from nvllm.forward.eager import EagerForward

        self._skip_without_device()
        rng = random.Random(1)
        shared = [rng.randrange(512) for _ in range(16)]
        prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 7, 30)] + [shared + [5, 6, 7]]
        with self._llm(checkpoint, {"name": self.name, **config_fields}) as llm:
            engine, runner = llm.engine, llm.engine.model_runner
            engine.add_request("warm", shared + [1], SamplingParams(temperature=0, max_tokens=1))
            while engine.has_unfinished_requests():
                engine.step()  # `shared`'s two blocks are now in the prefix cache
            for i, p in enumerate(prompts):
                engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=3))
            for step in ("prefill", "decode"):
                seqs = engine.scheduler.schedule()
                inputs = runner.prepare(step_inputs(seqs))
                assert inputs[2].is_decode == (step == "decode")
                layers = runner._attention_layers()
                before = [(m.k_cache.clone(), m.v_cache.clone()) for m in layers]
                got = runner.forward(*inputs)
                written = [(m.k_cache.clone(), m.v_cache.clone()) for m in layers]
                for m, (k, v) in zip(layers, before):
                    m.k_cache.copy_(k), m.v_cache.copy_(v)
                with torch.inference_mode():
                    want = EagerForward.__call__(runner.forward_strategy, *inputs)
                atol, rtol = self.tolerance
                torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=f"{step} logits")
                for m, (k, v) in zip(layers, written):
                    torch.testing.assert_close(k, m.k_cache, atol=atol, rtol=rtol, msg=f"{step} K cache")
                    torch.testing.assert_close(v, m.v_cache, atol=atol, rtol=rtol, msg=f"{step} V cache")
                engine.scheduler.postprocess(seqs, runner.sampler(want.float(), seqs))

    @pytest.mark.parametrize("num_blocks", [None, 10], ids=["roomy", "preempting"])
    def test_matches_transformers_greedy(self, config_fields, checkpoint, num_blocks):
        self._skip_without_device()
        rng = random.Random(0)
        prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 9, 40, 23)]
        prompts.append(prompts[2][:24] + [3, 1, 4])  # a prefix hit on the third prompt's blocks
        want = hf_greedy(checkpoint, prompts, self.max_new_tokens)
        greedy = SamplingParams(temperature=0, max_tokens=self.max_new_tokens, ignore_eos=True)
        kv_cache = {"block_size": 8, **({"num_blocks": num_blocks} if num_blocks else {})}
        with self._llm(checkpoint, {"name": self.name, **config_fields}, kv_cache=kv_cache) as llm:
            got = [o.token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
            if num_blocks:
                assert llm.engine.scheduler.num_preemptions > 0, "the small cache forced no preemption"
            assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks
        assert got == want
