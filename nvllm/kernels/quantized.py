"""Matmuls over weights quantized in blocks of 32 along k (nvllm/kernels/quantized.c), in the
layout the quantized loaders produce:

- int8: `qweight` int8 [N, K], `scales` float16 [N, K // 32]; w = q * d (GGUF Q8_0's arithmetic)
- int4: `qweight` uint8 [N, K // 2], in each block of 32 byte i holding weight i in its low nibble
  and weight i + 16 in its high one; `scales`, `mins` float16 [N, K // 32]; w = q * d + m (GGUF
  Q4_1's; Q4_0 is m = -8 d); or `scales`, `mins` float32 (GGUF Q4_K's sub-block scales and minimums)

Activations and sums are float32: `linear_int8(x, q, d)` equals `x @ dequantized.T` up to the
order of the sums. With activations="int8" each block of 32 of x's rows is rounded to int8 first
(a float32 scale a block, max |x| / 127: Q8_0's) and the products are summed exactly in int32 a
block (quantization.activations=int8's arithmetic, as forward=fused_cpu's step runs it). The kernels themselves are quantized.h's, which the step shares;
these wrappers let the tests run them alone."""
import ctypes
import functools

import torch

from nvllm.kernels import load_library

BLOCK = 32
_ptr, _i64 = ctypes.c_void_p, ctypes.c_int64


@functools.cache
def _library():
    lib = load_library("quantized.c", "the quantized matmul", "float weights (quantization=none)")
    lib.nvllm_linear_int8.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _i64, _ptr, ctypes.c_int]
    lib.nvllm_linear_int4.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64, _ptr, ctypes.c_int]
    lib.nvllm_linear_int4_f32.argtypes = lib.nvllm_linear_int4.argtypes
    lib.nvllm_linear_dot.argtypes = lib.nvllm_linear_int4.argtypes + [ctypes.c_int]
    lib.nvllm_linear_int8.restype = lib.nvllm_linear_int4.restype = lib.nvllm_linear_int4_f32.restype = None
    lib.nvllm_linear_dot.restype = ctypes.c_int
    lib.nvllm_int8_dot_isa.restype = ctypes.c_char_p
    return lib


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]):
    if t.dtype != dtype or tuple(t.shape) != shape or t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU {str(dtype).removeprefix('torch.')} tensor of shape {list(shape)}, "
                         f"got {str(t.dtype).removeprefix('torch.')} {list(t.shape)} on {t.device.type}")


def _inputs(x: torch.Tensor, qweight: torch.Tensor, k_per_byte: int):
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"x: expected a float32 CPU tensor, got {x.dtype} on {x.device.type}")
    k = x.shape[-1]
    if k % BLOCK:
        raise ValueError(f"x has {k} input features, not a multiple of {BLOCK} (the quantization block): "
                         f"leave this weight unquantized")
    n = qweight.shape[0]
    return x.reshape(-1, k).contiguous(), n, k, (n, k // k_per_byte), (n, k // BLOCK)


def _dot(x2, k, qweight, scales, mins, n, y, fmt: int):
    """The int8-activation matmul (quantized.c nvllm_linear_dot; fmt 0 int8, 1 int4, 2 int4 with float32 scales)"""
    if _library().nvllm_linear_dot(x2.data_ptr(), x2.shape[0], k, qweight.data_ptr(), scales.data_ptr(),
                                   mins.data_ptr() if mins is not None else None, n, y.data_ptr(),
                                   torch.get_num_threads(), fmt):
        raise MemoryError("no memory for the int8 activations")


def linear_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, activations: str = "float") -> torch.Tensor:
    """x [..., K] float32 times the int8 weight [N, K] transposed: [..., N] float32; activations="int8":
    x's blocks rounded to int8 first, the products summed in int32."""
    x2, n, k, q_shape, s_shape = _inputs(x, qweight, 1)
    _check("qweight", qweight, torch.int8, q_shape)
    _check("scales", scales, torch.float16, s_shape)
    y = torch.empty(x2.shape[0], n, dtype=torch.float32)
    qweight, scales = qweight.contiguous(), scales.contiguous()
    if activations == "int8":
        _dot(x2, k, qweight, scales, None, n, y, 0)
    else:
        _library().nvllm_linear_int8(x2.data_ptr(), x2.shape[0], k, qweight.data_ptr(), scales.data_ptr(), n,
                                     y.data_ptr(), torch.get_num_threads())
    return y.reshape(*x.shape[:-1], n)


def int8_dot_isa() -> str:
    """Where activations="int8"'s int32 sums come from in this build: vnni, avx2 or portable."""
    return _library().nvllm_int8_dot_isa().decode()


def linear_int4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                activations: str = "float") -> torch.Tensor:
    """x [..., K] float32 times the int4 weight [N, K] (packed [N, K // 2]) transposed: [..., N] float32.
    `scales` and `mins` both float16, or both float32; activations="int8" as linear_int8's."""
    x2, n, k, q_shape, s_shape = _inputs(x, qweight, 2)
    _check("qweight", qweight, torch.uint8, q_shape)
    dtype = torch.float32 if scales.dtype == torch.float32 else torch.float16
    _check("scales", scales, dtype, s_shape)
    _check("mins", mins, dtype, s_shape)
    y = torch.empty(x2.shape[0], n, dtype=torch.float32)
    qweight, scales, mins = qweight.contiguous(), scales.contiguous(), mins.contiguous()
    if activations == "int8":
        _dot(x2, k, qweight, scales, mins, n, y, 2 if dtype == torch.float32 else 1)
        return y.reshape(*x.shape[:-1], n)
    fn = _library().nvllm_linear_int4_f32 if dtype == torch.float32 else _library().nvllm_linear_int4
    fn(x2.data_ptr(), x2.shape[0], k, qweight.data_ptr(), scales.data_ptr(), mins.data_ptr(), n, y.data_ptr(),
       torch.get_num_threads())
    return y.reshape(*x.shape[:-1], n)
