"""attention=cpu builds its C kernel once per source, compiler and CPU, and says what to do when
it cannot (the kernel's answers are checked by tests/test_conformance.py::TestCPU)."""
import pytest
import torch

from nvllm import registry
from nvllm.attention import cpu
from nvllm.config import ConfigError
from nvllm.plugins import load_plugins

load_plugins()


@pytest.fixture
def fresh_kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NVLLM_CACHE", str(tmp_path))
    cpu.decode_kernel.cache_clear()
    yield tmp_path / "kernels"
    cpu.decode_kernel.cache_clear()


def build():
    return registry.build("attention", "cpu", device=torch.device("cpu"), dtype=torch.float32)


def test_compiled_once_and_reused(fresh_kernel_cache):
    build()
    libraries = list(fresh_kernel_cache.glob("cpu_decode-*.so"))
    assert len(libraries) == 1 and not list(fresh_kernel_cache.glob("*.tmp"))
    built_at = libraries[0].stat().st_mtime_ns
    cpu.decode_kernel.cache_clear()  # a new process: finds the library, compiles nothing
    build()
    assert libraries[0].stat().st_mtime_ns == built_at


def test_no_compiler(fresh_kernel_cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(ConfigError, match=r"no C compiler .*apt install gcc.* or use attention=sdpa"):
        build()


def test_compiler_fails(fresh_kernel_cache, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1 without a word
    with pytest.raises(ConfigError, match=r"(?s)compiling .*cpu_decode.c with false failed \(exit status 1\).*use attention=sdpa"):
        build()
    assert not list(fresh_kernel_cache.glob("*"))


def test_refuses_other_devices_and_dtypes():
    with pytest.raises(ConfigError, match="runs on the CPU and this run is on cuda"):
        registry.build("attention", "cpu", device=torch.device("cuda"), dtype=torch.float32)
    with pytest.raises(ConfigError, match="runs float32, bfloat16 or float16 models, not torch.float64"):
        registry.build("attention", "cpu", device=torch.device("cpu"), dtype=torch.float64)
    for dtype in (torch.bfloat16, torch.float16):  # 16-bit models: float32 attention over a float32 cache
        assert registry.build("attention", "cpu", device=torch.device("cpu"), dtype=dtype).cache_dtype == torch.float32
