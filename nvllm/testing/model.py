"""ModelSuite: an architecture's greedy tokens equal transformers'; `hf_greedy`, the reference."""
import json
import random
from pathlib import Path

import pytest
import torch

from nvllm import registry
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams

from nvllm.testing.common import ComponentSuite


class ModelSuite(ComponentSuite):
    """On its own seeded random-weight checkpoint (its `random_presets[preset]`), the architecture's
    greedy tokens equal Hugging Face transformers' (float32, CPU), batched and with prefix-cache hits."""

    family = "model"
    preset: str = "tiny"
    # extra arguments for make_random_checkpoint (a transformers config class, config fields)
    checkpoint_overrides: dict = {}
    max_new_tokens: int = 12

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory) -> str:
        from nvllm.tools.checkpoint import make_random_checkpoint

        load_plugins()
        arch = registry.get("model", cls.name)
        assert cls.preset in arch.random_presets, f"{cls.name} needs random_presets[{cls.preset!r}]"
        assert arch.hf_config_class and arch.hf_model_types, f"{cls.name} needs hf_config_class and hf_model_types"
        return make_random_checkpoint(cls.name, str(tmp_path_factory.mktemp(cls.name)), preset=cls.preset,
                                      seed=0, **cls.checkpoint_overrides)

    def test_matches_transformers_greedy(self, config_fields, checkpoint):
        from nvllm import LLM

        vocab = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]
        rng = random.Random(0)
        prompts = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 9, 40)]
        # after the first batch, the last prompt's first two 16-token blocks are in the prefix cache
        second = prompts[-1][:33] + [rng.randrange(vocab) for _ in range(5)]
        want = hf_greedy(checkpoint, prompts + [second], self.max_new_tokens)
        greedy = SamplingParams(temperature=0, max_tokens=self.max_new_tokens, ignore_eos=True)
        with LLM(model={"name": self.name, "path": checkpoint, **config_fields}, kv_cache={"block_size": 16},
                 max_model_len=256, max_num_batched_tokens=512) as llm:
            got = [o.token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
            got += [o.token_ids for o in llm.generate([second], greedy, use_tqdm=False)]
            assert llm.engine.kv_cache.num_hit_tokens > 0, "the second round found no prefix hit"
        assert got == want


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int,
              round_to: torch.dtype | None = None) -> list[list[int]]:
    """Reference tokens: transformers, float32 on CPU, greedy, one prompt at a time, past EOS.
    `round_to`: the weights rounded to that dtype and back first (what a run that keeps its
    weights in 16 bits and computes in float32 computes)."""
    import inspect

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if round_to is not None:
        with torch.no_grad():
            for param in model.parameters():  # tied embeddings: one tensor, rounded once
                param.copy_(param.to(round_to).float())
    # transformers 5 renamed `past_key_values` to `cache`
    cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model(torch.tensor([prompt]), use_cache=True)
            generated = []
            for _ in range(max_new_tokens):
                generated.append(int(out.logits[0, -1].argmax()))
                out = model(torch.tensor([[generated[-1]]]), use_cache=True, **{cache_key: getattr(out, cache_key)})
            outputs.append(generated)
    return outputs
