"""A fused mixture-of-experts step in Triton (vLLM's fused_moe, as mini-sglang runs it): the step's
(token, choice) pairs are sorted by expert and each expert's run padded to a whole number of
BLOCK_M rows (`align`, torch), then one grouped matmul computes every pair's gate/up projection
with its expert's weights, torch applies SiLU-and-multiply, and a second grouped matmul the down
projection, scaled by the pair's routing weight. Each program owns BLOCK_M pairs of one expert, so
an expert's weights are read once per step for all the tokens that chose it, whatever the batch.

nvllm.models.layers.moe.FusedMoE runs it on CUDA, inside the decode CUDA graphs too: nothing here
reads a tensor back to the host. The sort is torch ops whose output shapes depend only on the
number of pairs (scatter_add for the counts, a stable argsort, cumsum, searchsorted); the grid is
sized for the worst case (every expert's run one row past a block), and the programs of blocks
past the last expert's run, or of experts another rank holds (expert parallelism), return at
once. On a CPU it runs in Triton's interpreter (the tests).

Experts packed by a weight format (quantization=int8, int4: packed.py's layout, stacked per expert)
are read as triton_quantized.py's weight-only matmul reads a linear layer's: each tile of packed
bytes and its group's scale (and minimum) loaded and dequantized in registers (float32 arithmetic
in packed.dequantize's order, then x's dtype), int4's bytes split by nibble into two dots of half
width."""
# the kernels' `tl.constexpr` annotations must stay strings: `tl` is bound only on first use
from __future__ import annotations

import torch
import torch.nn.functional as F

from nvllm.kernels.triton_mode import jit, triton_for

tl = None  # triton.language, bound by _jit()


def _grouped_kernel(a_ptr, b_ptr, s_ptr, min_ptr, c_ptr, weight_ptr, pair_ptr, block_expert_ptr, num_pairs,
                    num_experts, N, K, a_stride, b_stride_e, b_stride_n, c_stride,
                    PAIRS_PER_ROW: tl.constexpr, WEIGHTED: tl.constexpr, FORMAT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """c[pair] = a[pair // PAIRS_PER_ROW] @ b[expert].T (times weight[pair] if WEIGHTED) for the
    BLOCK_M pairs of block program_id(0) and the BLOCK_N output columns of program_id(1). FORMAT:
    0 b in a's dtype; 1 int8 (q * d); 2 int4 (q * d + m), with the scales s [experts, N, K // 32]
    (and minimums)."""
    expert = tl.load(block_expert_ptr + tl.program_id(0))
    if expert >= num_experts:  # past the last run, or an expert this rank does not hold
        return
    pairs = tl.load(pair_ptr + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M))
    pair_ok = pairs < num_pairs  # the padding of a run holds num_pairs
    rows = (pairs // PAIRS_PER_ROW).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    b_ptr += expert.to(tl.int64) * b_stride_e
    cols = n.to(tl.int64)
    groups = expert.to(tl.int64) * N * (K // 32)  # the expert's first scale (and minimum)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, K, BLOCK_K):
        if FORMAT == 2:
            # byte j of a row: group j // 16, weights j % 16 (low nibble) and j % 16 + 16 (high)
            j = start // 2 + tl.arange(0, BLOCK_K // 2)
            j_ok = j < K // 2
            low = (j // 16) * 32 + j % 16  # the a columns of the low nibbles; the high ones are 16 further
            a_ok = pair_ok[:, None] & j_ok[None, :]
            a_low = tl.load(a_ptr + rows[:, None] * a_stride + low[None, :], mask=a_ok, other=0.0)
            a_high = tl.load(a_ptr + rows[:, None] * a_stride + low[None, :] + 16, mask=a_ok, other=0.0)
            w_ok = j_ok[:, None] & n_ok[None, :]
            byte = tl.load(b_ptr + cols[None, :] * b_stride_n + j[:, None], mask=w_ok, other=0)
            group = groups + cols[None, :] * (K // 32) + j[:, None] // 16
            d = tl.load(s_ptr + group, mask=w_ok, other=0.0).to(tl.float32)
            mn = tl.load(min_ptr + group, mask=w_ok, other=0.0).to(tl.float32)
            acc += tl.dot(a_low, ((byte & 15).to(tl.float32) * d + mn).to(a_low.dtype), input_precision=PRECISION)
            acc += tl.dot(a_high, ((byte >> 4).to(tl.float32) * d + mn).to(a_low.dtype), input_precision=PRECISION)
        else:
            k = start + tl.arange(0, BLOCK_K)
            k_ok = k < K
            a = tl.load(a_ptr + rows[:, None] * a_stride + k[None, :], mask=pair_ok[:, None] & k_ok[None, :],
                        other=0.0)
            w_ok = k_ok[:, None] & n_ok[None, :]
            b = tl.load(b_ptr + cols[None, :] * b_stride_n + k[:, None], mask=w_ok, other=0)
            if FORMAT == 1:
                d = tl.load(s_ptr + groups + cols[None, :] * (K // 32) + k[:, None] // 32, mask=w_ok, other=0.0)
                b = (b.to(tl.float32) * d.to(tl.float32)).to(a.dtype)
            acc += tl.dot(a, b, input_precision=PRECISION)
    out = acc.to(c_ptr.dtype.element_ty)  # the matmul's output in the activations' dtype, as F.linear's
    if WEIGHTED:
        out = out * tl.load(weight_ptr + pairs, mask=pair_ok, other=0.0)[:, None]
    tl.store(c_ptr + pairs.to(tl.int64)[:, None] * c_stride + n[None, :], out.to(c_ptr.dtype.element_ty),
             mask=pair_ok[:, None] & n_ok[None, :])


def _jit(fn, kernels):
    global tl
    tl = kernels.language
    return jit(fn, kernels.interpreted, ("num_pairs",))  # one kernel for every decode bucket's pairs


def align(experts: torch.Tensor, num_local_experts: int, first_expert: int, block_m: int):
    """moe_align_block_size in torch ops: the pairs (flattened [tokens, top_k] indices) sorted by
    local expert, each expert's run padded with `num_pairs` to a multiple of block_m, and each
    block's local expert (num_local_experts or more: nothing to run). Pairs whose expert another
    rank holds sort into one last run whose blocks run nothing."""
    flat = experts.flatten() - first_expert
    num_pairs = flat.numel()
    key = torch.where((flat >= 0) & (flat < num_local_experts), flat, num_local_experts)
    counts = torch.zeros(num_local_experts + 1, dtype=torch.int64, device=flat.device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    shift = (padded_end - padded) - (counts.cumsum(0) - counts)  # a run's padded start minus its start
    order = key.argsort(stable=True)
    slot = torch.arange(num_pairs, device=flat.device) + shift[key[order]]
    # at most one partial block per run that has pairs
    num_blocks = num_pairs // block_m + min(num_pairs, num_local_experts + 1)
    pair_ids = torch.full((num_blocks * block_m,), num_pairs, dtype=torch.int32, device=flat.device)
    pair_ids.scatter_(0, slot, order.to(torch.int32))
    starts = torch.arange(num_blocks, device=flat.device) * block_m
    block_expert = torch.searchsorted(padded_end, starts, right=True).to(torch.int32)
    return pair_ids, block_expert


def _operand(w, k: int) -> tuple:
    """A stack of experts' weights as the kernel's (b, scales, minimums, FORMAT): a float tensor
    [E, N, K], or packed.py's (qweight, scales, mins) stacked [E, N, ...] (mins None: int8); the
    tensors the format does not have are unread stand-ins."""
    if isinstance(w, torch.Tensor):
        w = w.contiguous()  # the kernel reads rows of k
        return w, w, w, 0
    qweight, scales, mins = (t.contiguous() if t is not None else None for t in w)
    if k % 32 or scales.shape != (*qweight.shape[:2], k // 32):
        raise ValueError(f"packed experts with scales {list(scales.shape)} for k={k}: expected "
                         f"[{qweight.shape[0]}, {qweight.shape[1]}, {k // 32}] with k a multiple of 32")
    return qweight, scales, scales if mins is None else mins, 1 if mins is None else 2


def fused_moe(x: torch.Tensor, w13, w2, scores: torch.Tensor, experts: torch.Tensor,
              first_expert: int = 0) -> torch.Tensor:
    """sum over each token's k choices of score * w2[e] @ (silu(gate) * up), [gate; up] = w13[e] @ x,
    for x [tokens, hidden], w13 [local experts, 2 * inter, hidden], w2 [local experts, hidden, inter],
    scores and experts [tokens, k] (global expert ids; this rank holds first_expert onwards). Pairs
    routed to experts this rank does not hold add nothing. w13 and w2 may each be packed instead:
    packed.py's (qweight, scales, mins) stacked per expert (FusedMoE.expert_weights)."""
    kernels = triton_for(x.device, "the Triton fused MoE", "a CPU, where the MoE layer runs its torch code")
    tokens, top_k = experts.shape
    hidden = x.shape[1]
    w13, s13, m13, f13 = _operand(w13, hidden)
    num_local, inter2 = w13.shape[:2]
    w2, s2, m2, f2 = _operand(w2, inter2 // 2)
    num_pairs = tokens * top_k
    block_m = 16 if num_pairs <= 512 else 64  # a decode step's few pairs per expert waste less padding
    pair_ids, block_expert = align(experts, num_local, first_expert, block_m)
    grouped = _jit(_grouped_kernel, kernels)
    precision = "ieee" if x.dtype == torch.float32 else None  # float32 means float32: no silent TF32
    blocks = dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=32, PRECISION=precision)
    x = x.contiguous()
    gate_up = torch.empty(num_pairs, inter2, dtype=x.dtype, device=x.device)
    grouped[(block_expert.numel(), -(-inter2 // 64))](
        x, w13, s13, m13, gate_up, scores, pair_ids, block_expert, num_pairs, num_local, inter2, hidden,
        x.stride(0), w13.stride(0), w13.stride(1), gate_up.stride(0), PAIRS_PER_ROW=top_k, WEIGHTED=False,
        FORMAT=f13, **blocks)
    gate, up = gate_up.chunk(2, dim=-1)
    act = F.silu(gate) * up
    # zeros: the rows of pairs whose expert is on another rank are never written
    down = torch.zeros(num_pairs, hidden, dtype=x.dtype, device=x.device)
    weights = scores.flatten().contiguous()
    grouped[(block_expert.numel(), -(-hidden // 64))](
        act, w2, s2, m2, down, weights, pair_ids, block_expert, num_pairs, num_local, hidden, inter2 // 2,
        act.stride(0), w2.stride(0), w2.stride(1), down.stride(0), PAIRS_PER_ROW=1, WEIGHTED=True, FORMAT=f2,
        **blocks)
    return down.view(tokens, top_k, hidden).sum(dim=1)
