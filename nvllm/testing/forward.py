"""ForwardSuite: a forward strategy computes what forward=eager computes, step by step, and the
greedy tokens of whole runs equal transformers'. A member that computes no tensors (forward=simulated,
an executor of its own) is held to what it promises instead: the real run's block accounting, every
request at its length, time that only moves forward, and refusals of what it cannot simulate."""
import random

import pytest
import torch

from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget
from nvllm.sampling_params import SamplingParams
from nvllm.sampler.base import as_list
from nvllm.step import StepResult

from nvllm.testing.common import ComponentSuite
from nvllm.testing.model import hf_greedy


class ForwardSuite(ComponentSuite):
    """On a tiny random-weight checkpoint of `model`: one prefill step (prompts of several lengths,
    some with prefix-cache hits) and one decode step through the strategy give the logits and
    write the K/V that forward=eager gives and writes from the same cache; whole runs, batched,
    with prefix caching and with preemption forced by a small cache, give transformers' greedy
    tokens. `check` refuses a target it cannot run on with a ConfigError.

    A member that is an executor of its own (forward=simulated) skips the two comparisons of tensors and tokens and
    is checked instead: on the same workload (prefix hits, a cache small enough to preempt) the
    scheduler and allocator do exactly what they do under forward=eager (steps, tokens, preemptions
    per request, prefix-cache hits, every block freed); every request generates its max_tokens;
    its clock is the engine's and each request's token times rise from its arrival; text prompts,
    stop tokens and EOS-driven lengths are rejected with a message naming the strategy."""

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

    def _computes_tensors(self, want: bool):
        """Skip a test of the other kind: a strategy the model runner runs (tensors), or an executor
        of its own that stands in for the runner (forward=simulated)."""
        from nvllm.step import Executor

        if issubclass(self.component, Executor) == want:
            pytest.skip(f"forward={self.name} {'computes no' if want else 'computes'} tensors: "
                        f"{'its stand-in' if want else 'its tensor'} tests check it")

    def test_steps_match_eager(self, config_fields, checkpoint):
        """A prefill step and a decode step: the strategy's logits and cache writes against eager's,
        from the same cache."""
        from nvllm.engine.model_runner import step_inputs
        from nvllm.forward.eager import EagerForward

        self._computes_tensors(True)
        self._skip_without_device()
        rng = random.Random(1)
        shared = [rng.randrange(512) for _ in range(16)]
        prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 7, 30)] + [shared + [5, 6, 7]]
        with self._llm(checkpoint, {"name": self.name, **config_fields}) as llm:
            engine, runner = llm.engine, llm.engine.executor
            engine.add_request("warm", shared + [1], SamplingParams(temperature=0, max_tokens=1))
            while engine.has_unfinished_requests():
                engine.step()  # `shared`'s two blocks are now in the prefix cache
            for i, p in enumerate(prompts):
                engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=3))
            for step in ("prefill", "decode"):
                plan = engine.scheduler.schedule()
                inputs = runner.prepare(*step_inputs(plan))
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
                engine.scheduler.update(plan, StepResult(as_list(runner.sampler(want.float(), plan.seqs))), 0.0)

    @pytest.mark.parametrize("num_blocks", [None, 10], ids=["roomy", "preempting"])
    def test_matches_transformers_greedy(self, config_fields, checkpoint, num_blocks):
        self._computes_tensors(True)
        self._skip_without_device()
        rng = random.Random(0)
        prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 9, 40, 23)]
        prompts.append(prompts[2][:24] + [3, 1, 4])  # a prefix hit on the third prompt's blocks
        want = hf_greedy(checkpoint, prompts, self.max_new_tokens)
        greedy = SamplingParams(temperature=0, max_tokens=self.max_new_tokens, ignore_eos=True)
        kv_cache = {"block_size": 8, **({"num_blocks": num_blocks} if num_blocks else {})}
        with self._llm(checkpoint, {"name": self.name, **config_fields}, kv_cache=kv_cache) as llm:
            got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
            if num_blocks:
                assert llm.engine.scheduler.num_preemptions > 0, "the small cache forced no preemption"
            assert llm.engine.kv_cache.num_free_blocks == llm.engine.kv_cache.num_blocks
        assert got == want

    # -- a strategy that computes no tensors (forward=simulated) ----------------------------------------
    @pytest.mark.parametrize("num_blocks", [64, 10], ids=["roomy", "preempting"])
    def test_stands_in_with_the_real_block_accounting(self, config_fields, checkpoint, num_blocks):
        """The workload of test_matches_transformers_greedy, all requests at once: the scheduler and the
        allocator do under this strategy exactly what they do under forward=eager."""
        self._computes_tensors(False)
        rng = random.Random(0)
        prompts = [[rng.randrange(512) for _ in range(n)] for n in (1, 9, 40, 23)]
        prompts.append(prompts[2][:24] + [3, 1, 4])  # a prefix hit on the third prompt's blocks
        prompts.append(list(prompts[1]))  # an exact duplicate
        lengths = [self.max_new_tokens + i for i in range(len(prompts))]
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
        kv_cache = {"block_size": 8, "num_blocks": num_blocks}
        runs = {}
        for forward in ({"name": "eager"}, {"name": self.name, **config_fields}):
            # two at a time: later prompts find the blocks earlier ones computed
            with self._llm(checkpoint, forward, kv_cache=kv_cache, max_num_seqs=2) as llm:
                engine = llm.engine
                outputs = llm.generate(prompts, params, use_tqdm=False)
                assert all(o.error is None for o in outputs), [o.error for o in outputs]
                s, kv = engine.stats, engine.kv_cache
                runs[forward["name"]] = dict(
                    steps=(s.steps, s.prefill_tokens, s.decode_tokens), preemptions=engine.scheduler.num_preemptions,
                    per_request=[o.metrics.num_preemptions for o in outputs], hits=(kv.num_hit_tokens, kv.num_lookup_tokens),
                    lengths=[len(o.outputs[0].token_ids) for o in outputs], free=kv.num_free_blocks == kv.num_blocks)
                if forward["name"] == self.name:
                    assert engine.clock is engine.executor.clock, "the engine reads the executor's clock"
                    for o in outputs:
                        times = [o.metrics.arrival_time, *o.outputs[0].token_times]
                        assert all(a < b for a, b in zip(times, times[1:])), f"time stood still or ran back: {times}"
                    assert engine.clock.now() == max(o.outputs[0].token_times[-1] for o in outputs)
        want, got = runs["eager"], runs[self.name]
        assert got == want
        assert got["lengths"] == lengths and got["free"]
        if num_blocks == 10:
            assert got["preemptions"] > 0, "the small cache forced no preemption"
        assert got["hits"][0] > 0, "no prefix-cache hit"

    def test_refuses_what_it_cannot_simulate(self, config_fields, checkpoint):
        """A request whose length would depend on the generated text is rejected, naming the strategy."""
        self._computes_tensors(False)
        plain = dict(temperature=0, max_tokens=4, ignore_eos=True)
        with self._llm(checkpoint, {"name": self.name, **config_fields}) as llm:
            outputs = llm.engine.generate([[1, 2, 3]] * 4 + ["text"], [  # a run's driver: one output each
                SamplingParams(**plain), SamplingParams(**{**plain, "ignore_eos": False}),
                SamplingParams(**plain, stop_token_ids=[7]), SamplingParams(**plain, stop=["x"]),
                SamplingParams(**plain)], use_tqdm=False)
        assert outputs[0].error is None and len(outputs[0].outputs[0].token_ids) == 4
        for out in outputs[1:]:
            assert out.outputs[0].finish_reason == "rejected" and out.error.startswith(f"forward={self.name}: "), out.error
