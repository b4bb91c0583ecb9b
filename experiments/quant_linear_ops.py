"""`python experiments/quant_linear_ops.py`: time one SmolLM2-shaped linear layer (gate/up: N=3072,
K=576; down: N=576, K=1536) at 1 and 64 rows, each way forward=eager could multiply by a packed
weight: float32 F.linear (the baseline), F.linear on the weight dequantized each call (what
quantization=int8/int4 run), and torch's own int4 weight-only op, whose numerics differ (it is
compared bit for bit with the dequantizing linear). Median of 30 calls, milliseconds."""
import time

import torch
import torch.nn.functional as F

from nvllm.models.layers.packed import dequantize, quantize_int4, quantize_int8

torch.manual_seed(0)
def t(fn, reps=30):
    fn(); best = []
    for _ in range(reps):
        s = time.perf_counter(); fn(); best.append(time.perf_counter() - s)
    best.sort(); return best[len(best)//2] * 1e3
print("threads", torch.get_num_threads())
for (n, k) in [(3072, 576), (576, 1536)]:
    w = torch.randn(n, k) * 0.02
    q8, q4 = quantize_int8(w), quantize_int4(w)
    # torch's int4 op: (q - 8) * scale + zero, zero = min + 8 * scale
    qs = torch.cat([q4["qweight"].view(n, -1, 16) & 15, q4["qweight"].view(n, -1, 16) >> 4], -1).reshape(n, k).int()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qs, 2)
    sz = torch.stack([q4["scales"].float().t(), (q4["mins"].float() + 8 * q4["scales"].float()).t()], -1).contiguous()
    for m in (1, 64):
        x = torch.randn(m, k)
        ref = F.linear(x, dequantize(**q4))
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz)
        row = {"f32 F.linear": t(lambda: F.linear(x, w)),
               "int8 dequantize+F.linear": t(lambda: F.linear(x, dequantize(q8["qweight"], q8["scales"], None))),
               "int4 dequantize+F.linear": t(lambda: F.linear(x, dequantize(**q4))),
               "int4 aten._weight_int4pack_mm_for_cpu": t(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz))}
        print(f"N={n} K={k} M={m}: " + ", ".join(f"{k_} {v:.3f} ms" for k_, v in row.items())
              + f"; int4 op max |diff| vs dequantize+F.linear {float((got - ref).abs().max()):.2e}, bitwise equal {torch.equal(got, ref)}")
