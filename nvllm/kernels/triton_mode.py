"""Importing Triton in the mode this process can serve, for every Triton kernel nvllm runs (the
triton and flash_attn attention backends, the weight-only matmuls and the fused MoE here).

Triton picks interpreter or compiler once per process, at import: nvllm sets TRITON_INTERPRET=1
itself where it can (no GPU, or a CPU backend built before triton is imported) and refuses a
device the process's mode cannot serve."""
import functools
import importlib.util
import os
import sys
from types import SimpleNamespace

import torch

from nvllm.errors import ConfigError

# Triton picks interpreter or compiler when it is first imported, and torch._dynamo imports it
# (transformers reaches dynamo when saving or loading models). Where no GPU can run compiled
# kernels the interpreter is the only mode that works: pick it at registration, importing nothing.
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@functools.cache
def triton_for(device: torch.device, what: str, instead: str) -> SimpleNamespace:
    """Import triton for tensors on `device` (its `language`, whether it is `interpreted`, and
    `next_power_of_2`), or say why it cannot serve them: `what` names the choice that needs it
    (attention=triton), `instead` the one that does not (attention=sdpa)."""
    if device.type == "cpu" and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton
        import triton.language
    except ImportError as e:
        raise ImportError(f"{what} needs the `triton` package, which is not installed: "
                          f"pip install triton (or nvllm[triton]), or use {instead}") from e
    # triton.language's own helpers were jitted at import: they tell which mode this process has
    interpreted = type(triton.language.standard.zeros).__name__ == "InterpretedFunction"
    if device.type == "cpu" and not interpreted:
        raise ConfigError(f"{what} on the CPU runs in Triton's interpreter, which must be chosen before "
                          "triton is imported, and triton was already imported without it in this process: set "
                          "TRITON_INTERPRET=1 in the environment (or load nvllm's plugins before anything imports "
                          f"triton), or use {instead}")
    if device.type != "cpu" and interpreted:
        raise ConfigError(f"{what} on {device}: TRITON_INTERPRET=1 was set when triton was imported, so "
                          "the kernels would run in the (CPU) interpreter; unset it to compile them for the GPU")
    return SimpleNamespace(interpreted=interpreted, language=triton.language, next_power_of_2=triton.next_power_of_2)


@functools.cache
def compiles_for(device: torch.device) -> bool:
    """Whether Triton kernels can be compiled for CUDA `device` in this process: where not (triton
    missing, or imported in interpreter mode) the layers with Triton kernels run their torch code."""
    try:
        return not triton_for(device, "", "").interpreted
    except (ImportError, ConfigError):
        return False


def use_kernels(x: torch.Tensor) -> bool:
    """Whether a layer that has Triton kernels runs them on `x` (on CUDA, where Triton compiles for
    it) rather than its torch code."""
    return x.is_cuda and compiles_for(x.device)


def why_no_compiled_kernels() -> str | None:
    """Why this process could not compile Triton kernels for CUDA, or None; without importing triton."""
    if importlib.util.find_spec("triton") is None:
        return "the `triton` package is not installed (pip install triton)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 is set, so Triton would run its kernels in the CPU interpreter (unset it)"
    return None


@functools.cache
def jit(fn, interpreted: bool, do_not_specialize: tuple[str, ...] = ()):
    """`triton.jit(fn)` in the process's mode; `fn`'s module must have bound `tl` first.
    `do_not_specialize`: arguments that vary from call to call (a batch's rows), which Triton would
    otherwise compile a kernel for per value class (1, a multiple of 16, other)."""
    import triton

    # jit reads the variable now: match triton.language's helpers, whatever the env says today
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpreted else "0"
    try:
        return triton.jit(fn, do_not_specialize=list(do_not_specialize) or None)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
