"""The kernels nvllm brings, in one place because more than one family uses them. C, for a CPU:

- paged_attention.h  decode attention straight from the paged cache (shared code)
- cpu_decode.c       attention=cpu's decode kernel (nvllm/attention/cpu.py)
- cpu_step.c         a Llama-family step's whole forward pass, forward=fused_cpu (nvllm/forward/fused_cpu.py)
- moe_step.h         its mixture-of-experts MLP: routing per row, each chosen expert over its rows (cpu_step.c's)
- widen.h            16-bit floats (bfloat16, float16) to float32, exactly (shared code)
- quantized.h        matmuls over int8 / int4 weights in blocks of 32, dequantized in registers, and int8 x
                     int8 ones (shared code: cpu_step.c's packed formats, quantized.c)
- quantized.c        those matmuls alone (quantized.py: their torch wrappers)
- threads.py         how their OpenMP threads (torch's too: one runtime) wait, set before torch loads

Triton, for CUDA (tested on a CPU in Triton's interpreter):

- triton_quantized.py  weight-only int8 / int4 matmuls over the same packed layout (the linear layers)
- triton_moe.py        the fused mixture-of-experts step: tokens sorted by expert, grouped matmuls

Each .c is compiled on first use with the system's C compiler and OpenMP into a per-user cache,
keyed on its source (and its quoted includes), the compiler, the flags and the CPU, and loaded
with ctypes. It is compiled for the CPU it runs on (-march=native): the kernels pick their vector
code (AVX-512, AVX2 + F16C, portable C) by the macros that sets. $NVLLM_KERNEL_FLAGS adds compiler
flags, say OLDER_CPUS["avx2"] to build and test an AVX2-only CPU's code on a CPU that has AVX-512."""
import hashlib
import os
import platform
import re
import shutil
import subprocess
from ctypes import CDLL
from pathlib import Path

from nvllm.errors import ConfigError

HERE = Path(__file__).parent
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
# linked apart, without -ffast-math: linking with it adds gcc's crtfastmath.o, which turns on
# flush-to-zero for the whole process (torch, numpy, everything) as soon as the library loads
LINK_FLAGS = ("-shared", "-fopenmp")
# $NVLLM_KERNEL_FLAGS that build, on this CPU, the code an older one runs (the tests build each): an
# AVX2-only CPU's (no AVX-512, and no AVX-VNNI, which recent Intel and AMD CPUs add beside AVX2), and
# the portable C
OLDER_CPUS = {"avx2": "-mno-avx512f -mno-avxvnni", "portable": "-mno-avx2 -mno-f16c"}


def _cpu_signature() -> str:
    """Compiled with -march=native: a cached build is only reused on a CPU with the same flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def flags() -> tuple[str, ...]:
    return FLAGS + tuple(os.environ.get("NVLLM_KERNEL_FLAGS", "").split())


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("NVLLM_CACHE", Path.home() / ".cache" / "nvllm")) / "kernels"


def load_library(name: str, what: str, instead: str) -> CDLL:
    """nvllm/kernels/`name` compiled once per source text (and its own "quoted" includes'),
    compiler and CPU into the kernel cache, and loaded. `what` names the choice that needs it
    (attention=cpu) and `instead` the one that needs no compiler (attention=sdpa), for the
    error message."""
    source = HERE / name
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which(compiler) is None:
        raise ConfigError(f"{what} compiles a small C kernel on first use and found no C compiler "
                          f"(cc, gcc or $CC); install one (Debian: apt install gcc) or use {instead}")
    text = source.read_bytes()
    includes = re.findall(rb'^#include "([^"]+)"', text, re.MULTILINE)
    texts = [text] + [(HERE / include.decode()).read_bytes() for include in includes]
    key = hashlib.sha256(b"\0".join([*texts, compiler.encode(), " ".join(flags() + LINK_FLAGS).encode(),
                                     platform.machine().encode(), _cpu_signature().encode()])).hexdigest()[:16]
    library = kernel_cache_dir() / f"{source.stem}-{key}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_name(f"{library.name}.{os.getpid()}.tmp")  # concurrent builds never collide
        objects = partial.with_suffix(".o")
        proc = subprocess.run([compiler, *flags(), "-c", str(source), "-o", str(objects)], capture_output=True, text=True)
        if proc.returncode == 0:
            proc = subprocess.run([compiler, *LINK_FLAGS, str(objects), "-o", str(partial), "-lm"],
                                  capture_output=True, text=True)
        objects.unlink(missing_ok=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ConfigError(f"{what}: compiling {source} with {compiler} failed (exit status "
                              f"{proc.returncode}):\n{proc.stderr[-3000:]}\n"
                              f"fix the compiler set-up (it needs OpenMP: gcc's libgomp) or use {instead}")
        os.replace(partial, library)
    return CDLL(str(library))
