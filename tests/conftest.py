import inspect
import os

import pytest
import torch

torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from nvllm.models.weights import smollm2_path

    return str(smollm2_path())


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory) -> str:
    from nvllm.models.weights import make_random_checkpoint

    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("tiny-qwen3")), preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    from nvllm.models.weights import make_random_checkpoint

    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("tiny-llama")), preset="tiny", seed=1)


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference: Hugging Face transformers, float32 on CPU, greedy, one prompt at a time, no EOS stop."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # transformers 5 renamed `past_key_values` to `cache`
    cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model(ids, use_cache=True)
            generated = []
            for _ in range(max_new_tokens):
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                out = model(torch.tensor([[token]]), use_cache=True, **{cache_key: getattr(out, cache_key)})
            outputs.append(generated)
    return outputs
