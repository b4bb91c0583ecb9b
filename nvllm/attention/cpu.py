"""Attention for CPU runs: decode reads the paged cache in place with a small C kernel
(cpu_decode.c, compiled on first use with the system's C compiler and OpenMP); prefill is the
sdpa backend's. The pure-torch decode first copies every sequence's blocks into one padded
tensor and then reads the copy; on a 2-core EPYC that copy alone cost more than the layer's
matmuls at 64 sequences (experiments/results/ has the measurements)."""
import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from nvllm.attention.base import AttentionMetadata, store_kvcache
from nvllm.attention.sdpa import SDPABackend
from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl

SOURCE = Path(__file__).with_name("cpu_decode.c")
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC")


def _cpu_signature() -> str:
    """Compiled with -march=native: a cached build is only reused on a CPU with the same flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("NVLLM_CACHE", Path.home() / ".cache" / "nvllm")) / "kernels"


def load_library(source: Path, what: str) -> ctypes.CDLL:
    """`source` compiled once per source text (and its own "quoted" includes'), compiler and CPU into the kernel
    cache, and loaded. `what` names the switch that needs it, for the error message."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which(compiler) is None:
        raise ConfigError(f"{what} compiles a small C kernel on first use and found no C compiler "
                          "(cc, gcc or $CC); install one (Debian: apt install gcc) or use attention=sdpa")
    text = source.read_bytes()
    includes = re.findall(rb'^#include "([^"]+)"', text, re.MULTILINE)  # e.g. cpu_step.c includes cpu_decode.c
    texts = [text] + [(source.parent / name.decode()).read_bytes() for name in includes]
    key = hashlib.sha256(b"\0".join([*texts, compiler.encode(), " ".join(FLAGS).encode(),
                                     platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    library = kernel_cache_dir() / f"{source.stem}-{key}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_name(f"{library.name}.{os.getpid()}.tmp")  # concurrent builds never collide
        proc = subprocess.run([compiler, *FLAGS, str(source), "-o", str(partial), "-lm"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ConfigError(f"{what}: compiling {source} with {compiler} failed (exit status "
                              f"{proc.returncode}):\n{proc.stderr[-3000:]}\n"
                              "fix the compiler set-up (it needs OpenMP: gcc's libgomp) or use attention=sdpa")
        os.replace(partial, library)
    return ctypes.CDLL(str(library))


@functools.cache
def decode_kernel():
    """The compiled `nvllm_paged_decode_attention`."""
    fn = load_library(SOURCE, "attention=cpu").nvllm_paged_decode_attention
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, i64, i64, i64, i64, i64, ctypes.c_float, ptr, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


class CPUBackend(SDPABackend):
    name = "cpu"
    auto_rank = {"cpu": 0}

    @dataclass
    class Config:
        name: str = "cpu"

    @classmethod
    def check(cls, device: torch.device, dtype: torch.dtype, block_size: int | None = None) -> None:
        """Raise naming the fix unless this is a float32 CPU run whose C compiler builds the kernel."""
        if device.type != "cpu":
            raise ConfigError(f"attention=cpu runs on the CPU and this run is on {device.type}; use attention=sdpa, "
                              f"triton or flash_attn there")
        if dtype != torch.float32:
            raise ConfigError(f"attention=cpu's decode kernel is float32 only, not {dtype}; use dtype=float32 "
                              f"(the CPU default) or attention=sdpa")
        decode_kernel()

    def __init__(self, config, device: torch.device, dtype: torch.dtype):
        super().__init__(config, device, dtype)
        self.kernel = decode_kernel()

    def prepare(self, meta: AttentionMetadata, block_size: int):
        if not meta.is_decode:
            super().prepare(meta, block_size)

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        if not meta.is_decode:
            return super().forward(q, k, v, k_cache, v_cache, meta, scale)
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        q = q.contiguous()
        out = torch.empty_like(q)
        tables, lens = meta.block_tables, meta.context_lens
        status = self.kernel(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
                             tables.shape[1], lens.data_ptr(), q.shape[0], q.shape[1], k_cache.shape[2],
                             q.shape[2], k_cache.shape[1], scale, out.data_ptr(), torch.get_num_threads())
        if status != 0:
            raise MemoryError("attention=cpu: the decode kernel could not allocate its score rows")
        return out


@hookimpl
def register_attention_backends(register):
    register(CPUBackend)
