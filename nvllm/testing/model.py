"""ModelSuite: an architecture's greedy tokens and their logprobs equal transformers', through every
forward strategy that accepts it (`parity_mismatches` runs one); `hf_greedy` and `hf_reference`, the reference."""
import json
import random
from pathlib import Path

import pytest
import torch

from nvllm import registry
from nvllm.errors import ConfigError
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams

from nvllm.testing.common import ComponentSuite

BLOCK_SIZE = 16


class ModelSuite(ComponentSuite):
    """On its own seeded random-weight checkpoint (its `random_presets[preset]`, drawn with
    `init="unit"` so that every term of its computation moves the output), through every registered
    forward strategy whose `check` accepts the architecture on `device` (eager; fused_cpu on a CPU
    only where the class declares `fused_step_layout`; cudagraph on CUDA): the greedy tokens equal
    Hugging Face transformers' (float32) and so do their logprobs (a scale of the logits changes no
    greedy token), batched and with prefix-cache hits. A strategy that refuses the model is skipped,
    its reason shown."""

    family = "model"
    preset: str = "tiny"
    # extra arguments for make_random_checkpoint (a transformers config class, config fields): set every
    # scalar the architecture adds (a multiplier, a bias switch) away from its identity value, so that
    # dropping it changes the output
    checkpoint_overrides: dict = {}
    max_new_tokens: int = 12
    # where nvllm runs ("cpu", or "cuda": skipped without a CUDA device); transformers runs on the CPU
    device: str = "cpu"

    def pytest_generate_tests(self, metafunc):
        super().pytest_generate_tests(metafunc)
        if "forward" in metafunc.fixturenames:
            metafunc.parametrize("forward", tensor_strategies())

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory) -> str:
        from nvllm.tools.checkpoint import make_random_checkpoint

        load_plugins()
        arch = registry.get("model", cls.name)
        assert cls.preset in arch.random_presets, f"{cls.name} needs random_presets[{cls.preset!r}]"
        assert arch.hf_config_class and arch.hf_model_types, f"{cls.name} needs hf_config_class and hf_model_types"
        return make_random_checkpoint(cls.name, str(tmp_path_factory.mktemp(cls.name)), preset=cls.preset,
                                      seed=0, init="unit", **cls.checkpoint_overrides)

    def test_matches_transformers(self, config_fields, checkpoint, forward):
        if self.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        refused = strategies_for(self.component, self.device)[forward]
        if refused:
            pytest.skip(f"forward={forward} does not run model={self.name} on {self.device}: {refused}")
        mismatches = parity_mismatches(self.name, checkpoint, forward, self.device, config_fields, self.max_new_tokens)
        assert not mismatches, "\n".join(mismatches)


def tensor_strategies() -> list[str]:
    """The registered forward strategies that run a model's tensors (not an executor of their own,
    such as forward=simulated)."""
    from nvllm.step import Executor

    load_plugins()
    return [n for n in registry.names("forward") if not issubclass(registry.get("forward", n), Executor)]


def strategies_for(arch: type, device: str = "cpu") -> dict[str, str | None]:
    """Each forward strategy of `tensor_strategies()` -> None where its `check` accepts `arch` on
    `device` (float32, tp=1, the attention backend attention=auto takes there), else why not."""
    from nvllm.attention.select import select_backend
    from nvllm.forward.base import ForwardTarget

    where = torch.device(device)
    attention, _ = select_backend("auto", where, torch.float32, BLOCK_SIZE)
    target = ForwardTarget(where, torch.float32, 1, arch, attention.name, False)
    reasons = {}
    for name in tensor_strategies():
        try:
            registry.get("forward", name).check(target)
            reasons[name] = None
        except (ConfigError, ImportError) as e:
            reasons[name] = str(e)
    return reasons


def parity_mismatches(model: str, checkpoint: str, forward: str = "auto", device: str = "cpu",
                      config_fields: dict | None = None, max_new_tokens: int = 12, tolerance: float = 1e-3) -> list[str]:
    """Where model=`model` on `checkpoint` under forward=`forward` departs from transformers (float32,
    CPU), one line per prompt (empty: none): three prompts batched, then one whose first two blocks
    are prefix-cache hits; greedy tokens must be equal, and each token's logprob within `tolerance`
    (absolute and relative)."""
    from nvllm import LLM

    vocab = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 9, 40)]
    # after the first batch, the last prompt's first two blocks are in the prefix cache
    second = prompts[-1][:2 * BLOCK_SIZE + 1] + [rng.randrange(vocab) for _ in range(5)]
    want_tokens, want_logprobs = hf_reference(checkpoint, prompts + [second], max_new_tokens)
    greedy = SamplingParams(temperature=0, max_tokens=max_new_tokens, ignore_eos=True, logprobs=0)
    with LLM(model={"name": model, "path": checkpoint, **(config_fields or {})}, forward=forward, device=device,
             dtype="float32", kv_cache={"block_size": BLOCK_SIZE}, max_model_len=256, max_num_batched_tokens=512) as llm:
        outs = [o.outputs[0] for o in llm.generate(prompts, greedy, use_tqdm=False)]
        outs += [o.outputs[0] for o in llm.generate([second], greedy, use_tqdm=False)]
        assert llm.engine.kv_cache.num_hit_tokens > 0, "the second round found no prefix hit"
    mismatches = []
    for i, (out, tokens, logprobs) in enumerate(zip(outs, want_tokens, want_logprobs)):
        if out.token_ids != tokens:
            mismatches.append(f"forward={forward}, prompt {i}: greedy tokens {out.token_ids}, transformers' {tokens}")
            continue
        got = [entry[t].logprob for entry, t in zip(out.logprobs, tokens)]
        bad = [j for j, (a, b) in enumerate(zip(got, logprobs)) if abs(a - b) > tolerance * (1 + abs(b))]
        if bad:
            j = bad[0]
            mismatches.append(f"forward={forward}, prompt {i}: logprob of token {j} ({tokens[j]}) {got[j]:.5f}, "
                              f"transformers' {logprobs[j]:.5f} (greedy tokens equal)")
    return mismatches


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference tokens: transformers, float32 on CPU, greedy, one prompt at a time, past EOS."""
    return hf_reference(path, prompts, max_new_tokens)[0]


def hf_reference(path: str, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], list[list[float]]]:
    """transformers' greedy tokens (float32 on CPU, one prompt at a time, past EOS) and each one's
    logprob (log_softmax of the raw logits)."""
    import inspect

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # transformers 5 renamed `past_key_values` to `cache`
    cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    tokens, logprobs = [], []
    with torch.inference_mode():
        for prompt in prompts:
            out = model(torch.tensor([prompt]), use_cache=True)
            generated, scores = [], []
            for _ in range(max_new_tokens):
                row = out.logits[0, -1].float().log_softmax(-1)
                generated.append(int(row.argmax()))
                scores.append(float(row[generated[-1]]))
                out = model(torch.tensor([[generated[-1]]]), use_cache=True, **{cache_key: getattr(out, cache_key)})
            tokens.append(generated)
            logprobs.append(scores)
    return tokens, logprobs
