"""Weight-only int8 and int4 matmuls in Triton: y = x @ w.T for a weight held in the packed layout
of nvllm/models/layers/packed.py (groups of 32 along k; int8 q * d; int4 q * d + m, two weights a
byte in GGUF's nibble order, d and m float16 or float32), which the linear layers run on CUDA in place of dequantizing the
whole weight with torch before every matmul.

gpt-fast's scheme: each program owns a [BLOCK_M, BLOCK_N] tile of y, walks k a BLOCK_K tile at a
time, loads the packed weights and their group's scale (and minimum), dequantizes them in
registers (float32 arithmetic in the order `packed.dequantize` uses, then rounded to x's dtype,
as `F.linear(x, dequantize(..., x.dtype))` would see them) and accumulates in float32. A step
reads the packed bytes, never a float copy of the weight: the point of the format on a GPU,
where a decode step's time is the weight bytes it streams.

The int4 tile is split by nibble rather than unpacked: in each group byte i holds weight i (low
nibble) and weight i + 16 (high), so the low nibbles of a tile's bytes multiply the x columns
g * 32 + i and the high ones the columns g * 32 + 16 + i, two dots of half width that read each
byte once. The sums' order differs from torch's, so results equal the dequantized matmul within
float32 rounding. On a CPU these run in Triton's interpreter (the tests); the layers use them on
CUDA only (nvllm/models/layers/linear.py)."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import torch

from nvllm.kernels.quantized import BLOCK
from nvllm.kernels.triton_mode import jit, triton_for

tl = None  # triton.language, bound by _jit()


def _kernel(x_ptr, q_ptr, s_ptr, min_ptr, y_ptr, M, N, K, x_stride, y_stride, INT4: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of y = x @ w.T, w int8 (q * d) or, INT4, int4 (q * d + m)."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    rows, cols = m.to(tl.int64), n.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, K, BLOCK_K):
        if INT4:
            # byte j of the row: group j // 16, weights j % 16 (low nibble) and j % 16 + 16 (high)
            j = start // 2 + tl.arange(0, BLOCK_K // 2)
            j_ok = j < K // 2
            low = (j // 16) * 32 + j % 16  # the x columns of the low nibbles; the high ones are 16 further
            x_ok = m_ok[:, None] & j_ok[None, :]
            x_low = tl.load(x_ptr + rows[:, None] * x_stride + low[None, :], mask=x_ok, other=0.0)
            x_high = tl.load(x_ptr + rows[:, None] * x_stride + low[None, :] + 16, mask=x_ok, other=0.0)
            w_ok = j_ok[:, None] & n_ok[None, :]
            b = tl.load(q_ptr + cols[None, :] * (K // 2) + j[:, None], mask=w_ok, other=0)
            group = cols[None, :] * (K // 32) + j[:, None] // 16
            d = tl.load(s_ptr + group, mask=w_ok, other=0.0).to(tl.float32)
            mn = tl.load(min_ptr + group, mask=w_ok, other=0.0).to(tl.float32)
            w_low = ((b & 15).to(tl.float32) * d + mn).to(x_low.dtype)
            w_high = ((b >> 4).to(tl.float32) * d + mn).to(x_low.dtype)
            acc += tl.dot(x_low, w_low, input_precision=PRECISION)
            acc += tl.dot(x_high, w_high, input_precision=PRECISION)
        else:
            k = start + tl.arange(0, BLOCK_K)
            k_ok = k < K
            x = tl.load(x_ptr + rows[:, None] * x_stride + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w_ok = k_ok[:, None] & n_ok[None, :]
            q = tl.load(q_ptr + cols[None, :] * K + k[:, None], mask=w_ok, other=0)
            d = tl.load(s_ptr + cols[None, :] * (K // 32) + k[:, None] // 32, mask=w_ok, other=0.0)
            w = (q.to(tl.float32) * d.to(tl.float32)).to(x.dtype)
            acc += tl.dot(x, w, input_precision=PRECISION)
    tl.store(y_ptr + rows[:, None] * y_stride + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _jit(fn, kernels):
    global tl
    tl = kernels.language
    return jit(fn, kernels.interpreted, ("M",))  # one kernel for every decode bucket's rows


def linear_packed(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] times the packed weight [N, K] transposed (int4 where `mins` is given), plus
    `bias`: [..., N] in x's dtype. Every tensor on one device; K a multiple of 32."""
    k = x.shape[-1]
    n = qweight.shape[0]
    if k % BLOCK or scales.shape != (n, k // BLOCK):
        raise ValueError(f"x has {k} input features and the packed weight's scales are {list(scales.shape)}: "
                         f"expected [{n}, {k // BLOCK}] with k a multiple of {BLOCK}")
    kernels = triton_for(x.device, "the Triton weight-only matmul", "a CPU, where packed layers dequantize in torch")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    qweight, scales = qweight.contiguous(), scales.contiguous()  # the kernel reads them row after row
    int4 = mins is not None
    mins = mins.contiguous() if int4 else scales  # int8: an unread stand-in
    rows = x2.shape[0]
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    # tl.dot wants each dimension >= 16; a decode step's few rows pad to 16
    block_m = min(64, max(16, kernels.next_power_of_2(rows)))
    block_n, block_k = 64, 64
    # float32 means float32: no silent TF32 on the GPU (16-bit inputs take the default)
    precision = "ieee" if x.dtype == torch.float32 else None
    grid = (-(-rows // block_m), -(-n // block_n))
    _jit(_kernel, kernels)[grid](x2, qweight, scales, mins, y, rows, n, k, x2.stride(0), y.stride(0),
                                 INT4=int4, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                 PRECISION=precision)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], n)
