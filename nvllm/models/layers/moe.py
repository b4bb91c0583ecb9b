"""A mixture-of-experts MLP: a router picks each token's top-k experts, whose SwiGLU MLPs run and
are summed weighted by the router's scores. The experts' weights are stacked tensors (`w13`: gate
and up concatenated, [experts, 2 * intermediate, hidden]; `w2`: down, [experts, hidden,
intermediate]); a step's tokens are grouped by expert, so each chosen expert runs once on its group
and its weights are read once per step: in torch on a CPU (and on CUDA without Triton), where
the host reads each expert's group size; on CUDA by the Triton fused MoE
(nvllm/kernels/triton_moe.py), which reads nothing back to the host, so CUDA graphs capture it.
forward=fused_cpu computes the same layer in C (nvllm/kernels/moe_step.h), reading these parameters.
A weight format (quantization=int8, int4) packs each expert's w13 and w2 in packed.py's layout,
expert after expert (`quantize`): torch dequantizes the experts that have tokens, the Triton
kernels and the C step read the packed bytes and dequantize in registers.

Under tensor parallelism either every rank holds every expert with its intermediate dimension
split (the default), or, with `moe.expert_parallel=true`, whole experts are placed on ranks
(num_experts / tp each, consecutive). Either way a rank's output is a partial sum over the hidden
dimension, all-reduced like a row-parallel linear's. The router is replicated: every rank routes
every token over every expert, so one rank's count of the tokens each expert got (`expert_tokens`)
is the whole layer's."""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from nvllm.distributed import all_reduce, tp_rank, tp_size
from nvllm.kernels.triton_mode import use_kernels, why_no_compiled_kernels
from nvllm.kernels.triton_moe import fused_moe
from nvllm.models.layers.linear import LinearBase, divide
from nvllm.models.layers.packed import dequantize

PACKED = ("qweight", "scales", "mins")  # a packed weight's tensors (packed.py), in dequantize's order

_expert_parallel = False


@contextmanager
def expert_parallel(enabled: bool):
    """MoE layers built inside place whole experts on ranks (`enabled`) or split each expert's
    intermediate dimension; the model runner builds the model inside it (`moe.expert_parallel`)."""
    global _expert_parallel
    previous, _expert_parallel = _expert_parallel, enabled
    try:
        yield
    finally:
        _expert_parallel = previous


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k experts and their scores: softmax over the experts in float32, top-k,
    then, where the architecture says so, the k scores divided by their sum (float32, [tokens, k])."""
    probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
    scores, experts = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        scores = scores / scores.sum(dim=-1, keepdim=True)
    return scores, experts


class FusedMoE(nn.Module):
    """Router (`gate`, replicated on every rank) and stacked experts. `renormalize`: divide the
    top-k scores by their sum (Mixtral always; Qwen3-MoE when `norm_topk_prob`). `scores_in_float32`:
    weight the experts' outputs by the float32 scores (Mixtral) rather than by scores cast to the
    hidden states' dtype first (Qwen3-MoE); in float32 runs both are the same."""

    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, scores_in_float32: bool = False):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok={top_k} must be between 1 and the number of experts, "
                             f"{num_experts}")
        self.num_experts, self.top_k = num_experts, top_k
        self.renormalize, self.scores_in_float32 = renormalize, scores_in_float32
        self.expert_parallel = _expert_parallel and tp_size() > 1
        if self.expert_parallel:
            self.num_local_experts = divide(num_experts, tp_size(), "num_experts (moe.expert_parallel=true)")
            self.intermediate_size = intermediate_size
        else:
            self.num_local_experts = num_experts
            self.intermediate_size = divide(intermediate_size, tp_size(), "the experts' intermediate size")
        self.first_expert = tp_rank() * self.num_local_experts if self.expert_parallel else 0
        # tokens routed to each expert since counting started (moe.expert_load: the model runner sets it
        # to zeros on rank 0); None: not counted
        self.expert_tokens: torch.Tensor | None = None
        self.held = {}  # w13, w2 held in another strategy's layout in their place (`hold`)
        self.gate = LinearBase(hidden_size, num_experts, bias=False, tp_dim=None)
        self.w13 = nn.Parameter(torch.empty(self.num_local_experts, 2 * self.intermediate_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(self.num_local_experts, hidden_size, self.intermediate_size))
        for param in (self.w13, self.w2):
            param.weight_loader = self.weight_loader
            param.num_experts = num_experts  # the checkpoint holds this many per layer, whatever this rank keeps
            param.holds_expert = self.holds_expert  # the loader reads only this rank's experts' tensors
        for name in self.packed_experts():  # set by `quantize`
            self.register_buffer(name, None, persistent=False)

    def holds_expert(self, expert: int) -> bool:
        return 0 <= expert - self.first_expert < self.num_local_experts

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int, expert: int):
        """One expert's Hugging Face weight (gate: shard 0, up: shard 1 of `w13`; down: `w2`) into
        its slot, this rank's part of it; an expert placed on another rank is skipped."""
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range: this layer has num_experts={self.num_experts}")
        width = self.intermediate_size * (1 if self.expert_parallel else tp_size())
        want = (width, param.shape[2]) if param is self.w13 else (param.shape[1], width)
        if tuple(loaded.shape) != want:
            raise ValueError(f"it has shape {tuple(loaded.shape)}, and this model's experts need {want} (hidden size "
                             f"{param.shape[1 if param is self.w2 else 2]}, expert width {width} in config.json)")
        if not self.holds_expert(expert):
            return
        local = expert - self.first_expert
        size, rank = self.intermediate_size, 0 if self.expert_parallel else tp_rank()
        if param is self.w13:
            param.data[local].narrow(0, shard_id * size, size).copy_(loaded.narrow(0, rank * size, size))
        else:
            param.data[local].copy_(loaded.narrow(1, rank * size, size))

    def quantize(self, pack):
        """Hold w13 and w2 packed from now on, each expert's [N, K] by `pack` (packed.py's
        quantize_int8 or quantize_int4) and stacked: `w13_qweight` [E, N, K] (int4: [E, N, K // 2]),
        `w13_scales` (and int4's `w13_mins`) [E, N, K // 32], the same for w2; the float ones are freed."""
        for name in ("w13", "w2"):
            w = getattr(self, name)
            parts = [pack(w[e].float()) for e in range(w.shape[0])]
            delattr(self, name)
            setattr(self, name, None)
            for key in parts[0]:
                setattr(self, f"{name}_{key}", torch.stack([p[key] for p in parts]))

    def hold(self, name: str, held):
        """Hold w13 or w2 as `held` from now on: forward=fused_cpu's stacked panels, which its C step
        reads (`held.tensors`: what stays resident; `held.expert(local)`: one expert's weight [N, K]
        again, where the torch modules run). The float stack is freed."""
        delattr(self, name)
        setattr(self, name, None)
        self.held[name] = held

    def packed_experts(self) -> dict[str, torch.Tensor | None]:
        """The packed experts' tensors by name (None: not packed)."""
        return {f"{w}_{key}": getattr(self, f"{w}_{key}", None) for w in ("w13", "w2") for key in PACKED}

    def expert_weights(self, name: str):
        """`name` (w13 or w2) as the matmuls read it: the float stack, or its packed (qweight, scales, mins)."""
        w = getattr(self, name)
        return w if w is not None else tuple(getattr(self, f"{name}_{key}") for key in PACKED)

    def expert_weight(self, name: str, local: int, dtype: torch.dtype) -> torch.Tensor:
        """This rank's expert `local`'s `name` weight in `dtype`, dequantized where it is packed."""
        if name in self.held:
            return self.held[name].expert(local)
        w = self.expert_weights(name)
        if isinstance(w, torch.Tensor):
            return w[local]
        return dequantize(*(t[local] if t is not None else None for t in w), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, experts = route(self.gate(x), self.top_k, self.renormalize)
        if not self.scores_in_float32:
            scores = scores.to(x.dtype)
        if self.expert_tokens is not None:  # (no host sync: a CUDA graph may capture it)
            flat = experts.flatten()
            self.expert_tokens.scatter_add_(0, flat, torch.ones_like(flat))
        if use_kernels(x):
            out = self.experts_triton(x, scores, experts)
        else:
            out = self.experts_torch(x, scores, experts)
        return all_reduce(out)

    def experts_triton(self, x: torch.Tensor, scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """This rank's experts' weighted sum for every token, by the Triton fused MoE."""
        return fused_moe(x, self.expert_weights("w13"), self.expert_weights("w2"), scores, experts, self.first_expert)

    def experts_torch(self, x: torch.Tensor, scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """The same in torch, one matmul pair per expert that has tokens (group sizes read on the host;
        a packed expert dequantized when it has tokens)."""
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            why = why_no_compiled_kernels() or f"Triton cannot compile kernels for {x.device}"
            raise RuntimeError(f"a CUDA graph is capturing a MoE layer that cannot run its Triton kernels ({why}), "
                               f"and its torch code reads group sizes on the host; use cudagraph=false")
        # the (token, choice) pairs sorted by expert: each expert's group is a contiguous run
        flat = experts.flatten()
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        scores = scores.flatten()
        out = torch.zeros_like(x)
        end = sum(counts[:self.first_expert])
        for local in range(self.num_local_experts):
            start, end = end, end + counts[self.first_expert + local]
            if start == end:
                continue
            pairs = order[start:end]
            tokens = pairs // self.top_k
            gate, up = F.linear(x[tokens], self.expert_weight("w13", local, x.dtype)).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.expert_weight("w2", local, x.dtype)) * scores[pairs, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out
