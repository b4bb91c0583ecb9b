"""The packed layout every quantized format shares (the C step of forward=fused_cpu reads the same):

- int8 (GGUF Q8_0): `qweight` int8 [N, K], `scales` float16 [N, K // 32];
  weight[n, k] = qweight[n, k] * scales[n, k // 32].
- int4 (GGUF Q4_1): `qweight` uint8 [N, K // 2]: in each block of 32 weights along k, byte i
  (0..15) holds weight i in its low nibble and weight i + 16 in its high nibble (GGUF's order);
  `scales` and `mins` float16 [N, K // 32]; weight = q * scale + min, q in 0..15. GGUF Q4_0
  ((q - 8) * d) is this with min = -8 * d, exact in float16. GGUF Q4_K is this with `scales` and
  `mins` float32 (its sub-blocks' d * sc and -dmin * m, which float16 cannot hold exactly).

N is the output features, K the input features, and K must be a multiple of GROUP. Dequantizing
is float32 arithmetic in this order, as gguf's own dequantizer does it, so a float32 model given
`dequantize`'s weights computes exactly what the quantized one does."""
import torch

GROUP = 32


def quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric per group: d = max|w| / 127 (rounded to float16), q = round(w / d) in [-127, 127]."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    d = (w.abs().amax(dim=-1) / 127).half()
    inverse = torch.where(d > 0, 1 / d.float(), torch.zeros((), dtype=torch.float32))
    q = torch.round(w * inverse.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return {"qweight": q.reshape(n, k), "scales": d}


def quantize_int4(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scale and minimum per group: m = min(w), d = (max(w) - m) / 15 (both rounded to float16),
    q = round((w - m) / d) in [0, 15]."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    low = w.amin(dim=-1)
    d = ((w.amax(dim=-1) - low) / 15).half()
    m = low.half()
    inverse = torch.where(d > 0, 1 / d.float(), torch.zeros((), dtype=torch.float32))
    q = torch.round((w - m.float().unsqueeze(-1)) * inverse.unsqueeze(-1)).clamp_(0, 15).to(torch.uint8)
    return {"qweight": pack_nibbles(q).reshape(n, k // 2), "scales": d, "mins": m}


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[..., 32] values in 0..15 -> [..., 16] bytes: weight i low, weight i + 16 high."""
    return q[..., :16] | (q[..., 16:] << 4)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] weight a packed one stands for, in `dtype` (computed in float32)."""
    n = qweight.shape[0]
    if mins is None:
        w = qweight.view(n, -1, GROUP).float() * scales.float().unsqueeze(-1)
    else:
        b = qweight.view(n, -1, GROUP // 2)
        q = torch.cat([b & 15, b >> 4], dim=-1).float()
        w = q * scales.float().unsqueeze(-1) + mins.float().unsqueeze(-1)
    return w.view(n, -1).to(dtype)

