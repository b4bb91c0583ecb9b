"""The flash_attn backend: its refusals, which run anywhere (flash-attn is never installed on a
CPU machine), and a comparison with float32 `sdpa` where CUDA and flash-attn are both present."""
import sys

import pytest
import torch

from nvllm import registry
from nvllm.attention.flash_attn import FlashAttnBackend
from nvllm.config import ConfigError
from nvllm.plugins import load_plugins
from tests.attention.conftest import TOLERANCE, make_batch, run, sdpa_reference

CUDA = torch.device("cuda")


def test_cpu_is_refused_naming_cuda_and_a_cpu_backend():
    """The fix offered on a CPU is a CPU backend: attention=triton would run in Triton's interpreter."""
    load_plugins()
    with pytest.raises(ConfigError, match="needs a CUDA device.*use attention=cpu .*or attention=sdpa") as refused:
        registry.build("attention", "flash_attn", device=torch.device("cpu"), dtype=torch.float32)
    assert "triton" not in str(refused.value)


def test_float32_is_refused():
    with pytest.raises(ConfigError, match="float16 and bfloat16 only"):
        FlashAttnBackend.check(CUDA, torch.float32)


@pytest.mark.parametrize("block_size", [16, 128, 384])
def test_block_sizes_not_a_multiple_of_256_are_refused(block_size):
    with pytest.raises(ConfigError, match=f"kv_cache.block_size={block_size}; use kv_cache.block_size=256"):
        FlashAttnBackend.check(CUDA, torch.bfloat16, block_size)


def test_block_size_256_passes_to_the_package_check():
    """Past device, dtype and block size, check() asks for the package itself (what auto needs)."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        for dtype, block_size in ((torch.bfloat16, 256), (torch.float16, 512)):
            with pytest.raises(ImportError, match="pip install flash-attn"):
                FlashAttnBackend.check(CUDA, dtype, block_size)
    else:
        FlashAttnBackend.check(CUDA, torch.bfloat16, 256)
        FlashAttnBackend.check(CUDA, torch.float16, 512)


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install flash-attn.*attention=sdpa or attention=triton"):
        FlashAttnBackend(FlashAttnBackend.Config(), device=CUDA, dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("q_lens, ctx_lens", [
    ([1] * 5, [1, 255, 256, 257, 1000]),  # decode across block boundaries
    ([7, 300, 1], [7, 300, 1]),  # prefill, nothing cached
    ([1, 5, 300, 40], [257, 600, 300, 1000]),  # prefill after a cached prefix
], ids=["decode", "prefill", "prefix"])
def test_matches_sdpa_on_cuda(dtype, q_lens, ctx_lens):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("flash_attn")
    batch = make_batch(q_lens, ctx_lens, 256, 16, 8, 128, device="cuda", dtype=dtype)
    out, k_cache, v_cache = run(FlashAttnBackend, batch)
    want, want_k, want_v = sdpa_reference(batch)
    torch.testing.assert_close(out.float(), want, **TOLERANCE[dtype])
    torch.testing.assert_close(k_cache.float(), want_k, atol=0, rtol=0)
    torch.testing.assert_close(v_cache.float(), want_v, atol=0, rtol=0)
