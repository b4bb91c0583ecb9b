import os

import pytest

import nvllm  # noqa: F401  first: it sets the OpenMP wait policy before torch loads
import torch  # noqa: E402
from nvllm.kernels.threads import cores  # noqa: E402

# the cores shared out between pytest-xdist's workers (`make test` runs two): more threads than cores
# only makes the workers wait for each other
torch.set_num_threads(max(1, cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
# no test reaches a model hub: a Hugging Face repo id resolves from the local cache or is refused
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from nvllm.models.weights import smollm2_path

    return str(smollm2_path())


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory) -> str:
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("tiny-qwen3")), preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("tiny-llama")), preset="tiny", seed=1)


@pytest.fixture(scope="session")
def tiny_text_path(tmp_path_factory) -> str:
    """A tiny random llama with SmolLM2's tokenizer and chat template, positions up to 16384: a server
    with real text handling whose steps take milliseconds (its text means nothing)."""
    from nvllm.models.weights import smollm2_path
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("tiny-llama-text")), preset="tiny",
                                  vocab_size=49152, max_position_embeddings=16384, tokenizer_from=str(smollm2_path()),
                                  seed=3)


from nvllm.testing import hf_greedy  # noqa: E402, F401  the reference tests and plugin suites share
