"""attention=auto: the default, resolved from the backends' own check() and auto_rank, before
the model is built; an explicit choice is checked the same way and refused with its message."""
import pytest
import torch

from nvllm import registry
from nvllm.attention import cpu
from nvllm.attention.flash_attn import FlashAttnBackend
from nvllm.attention.select import select_backend
from nvllm.attention.triton import TritonBackend
from nvllm.config import ConfigError, compose, typed_config
from nvllm.plugins import load_plugins

load_plugins()
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def fresh_kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVLLM_CACHE", str(tmp_path))
    cpu.decode_kernel.cache_clear()
    yield
    cpu.decode_kernel.cache_clear()


def test_auto_is_the_default_and_composes():
    assert compose().attention.name == "auto"
    assert compose(attention="auto").attention.name == "auto"


def test_every_backend_declares_check():
    for name in registry.names("attention"):
        cls = registry.get("attention", name)
        assert "check" in dir(cls) and callable(cls.check), name


def test_cpu_with_a_compiler_picks_the_cpu_kernel(fresh_kernel_cache, caplog):
    config, note = select_backend(compose().attention, CPU, torch.float32, 256)
    assert config.name == "cpu" and note.startswith("attention=auto chose cpu (cpu, float32")
    assert not caplog.records  # no notice when the fastest runs


@pytest.mark.parametrize("cc", ["/bin/false", "/nonexistent/cc"], ids=["compiler-fails", "no-compiler"])
def test_cpu_without_a_working_compiler_falls_back_to_sdpa_with_a_notice(fresh_kernel_cache, monkeypatch, caplog, cc):
    monkeypatch.setenv("CC", cc)
    config, note = select_backend({"name": "auto"}, CPU, torch.float32, 256)
    assert config.name == "sdpa" and "passed over cpu: attention=cpu" in note
    [record] = caplog.records  # one warning, in the log (the console's stderr under the CLI)
    message = record.getMessage()
    assert record.levelname == "WARNING" and message.startswith("nvllm: attention=auto chose sdpa") and "attention=cpu" in message


def test_cpu_bfloat16_picks_the_c_kernel():
    """It computes in float32 over a float32 cache for a 16-bit model too (forward=fused_cpu needs it)."""
    config, note = select_backend({"name": "auto"}, CPU, torch.bfloat16, 16)
    assert config.name == "cpu" and note.startswith("attention=auto chose cpu")


def test_cuda_order_comes_from_auto_rank(monkeypatch):
    """flash_attn when its check passes, else triton, else sdpa (checks stubbed: no GPU here)."""
    def ok(cls, *args):
        return None

    def refuse(cls, *args):
        raise ImportError("not installed")

    monkeypatch.setattr(FlashAttnBackend, "check", classmethod(ok))
    monkeypatch.setattr(TritonBackend, "check", classmethod(ok))
    assert select_backend({"name": "auto"}, CUDA, torch.bfloat16, 256)[0].name == "flash_attn"
    monkeypatch.setattr(FlashAttnBackend, "check", classmethod(refuse))
    config, note = select_backend({"name": "auto"}, CUDA, torch.bfloat16, 16)
    assert config.name == "triton" and "passed over flash_attn: not installed" in note
    monkeypatch.setattr(TritonBackend, "check", classmethod(refuse))
    assert select_backend({"name": "auto"}, CUDA, torch.bfloat16, 16)[0].name == "sdpa"


def test_flash_attn_block_size_is_part_of_the_choice():
    with pytest.raises(ConfigError, match="kv_cache.block_size=16"):
        FlashAttnBackend.check(CUDA, torch.bfloat16, 16)


def test_explicit_choices_are_checked_up_front(fresh_kernel_cache, monkeypatch):
    assert select_backend({"name": "sdpa"}, CPU, torch.float32, 16) == (typed_config("attention", "sdpa"), None)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        select_backend({"name": "flash_attn"}, CPU, torch.float32, 256)
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(ConfigError, match="compiling .* failed"):
        select_backend({"name": "cpu"}, CPU, torch.float32, 16)
