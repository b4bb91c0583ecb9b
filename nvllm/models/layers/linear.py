"""Linear layers sharded for tensor parallelism (Megatron style). Each parameter carries a
`weight_loader` that copies its shard out of a full Hugging Face weight. A quantized layer
(nvllm/quantization/) holds its weight packed (`qweight`, `scales`, `mins`: packed.py) in place
of `weight` (`PackedWeight`, which the embedding and the LM head share): on CUDA (with Triton) a
weight-only matmul reads the packed weight itself (nvllm/kernels/triton_quantized.py); elsewhere
it multiplies by the dequantized weight. Under forward=fused_cpu a float weight is held as the C
step's panels instead (`hold`), unpacked where the torch modules run."""
import torch
import torch.nn.functional as F
from torch import nn

from nvllm.distributed import all_reduce, tp_rank, tp_size
from nvllm.kernels.triton_mode import use_kernels
from nvllm.kernels.triton_quantized import linear_packed
from nvllm.models.layers.packed import dequantize


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by tp={denominator}; choose a tp that divides it")
    return numerator // denominator


def pack(weight: torch.Tensor) -> torch.Tensor:
    """onednn=true: a copy of the weight laid out once in oneDNN's blocked format, which its CPU
    matmul kernels read directly (the plain weight stays, for loading and for tests)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None, bias: torch.Tensor | None):
    if packed is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedWeight(nn.Module):
    """A module multiplying by a `weight` [N, K] that a packed format (nvllm/quantization/) may hold
    as `qweight`, `scales`, `mins` (packed.py) in its place: the linear layers, the embedding
    table and the LM head."""

    packed = None  # forward.onednn's copy of the float weight (`pack_weights`, where a module has it)
    held = None  # the float weight in another strategy's layout, held in its place (`hold`)

    def __init__(self):
        super().__init__()
        for name in ("qweight", "scales", "mins"):  # set by `quantize`
            self.register_buffer(name, None, persistent=False)

    def quantize(self, packed: dict[str, torch.Tensor]):
        """Hold the weight as `packed` (qweight, scales[, mins]) from now on; the float one is freed
        (a tied module given the same tensors shares them)."""
        self.weight_dtype = self.weight.dtype
        del self.weight
        self.weight = None
        for name, tensor in packed.items():
            setattr(self, name, tensor.contiguous())

    def hold(self, held):
        """Hold the float weight as `held` from now on: forward=fused_cpu's panels, which its C step
        reads (`held.tensors`: what stays resident; `held.dense()`: the weight [N, K] again, where the
        torch modules run). The float one is freed (a tied module given the same object shares it)."""
        del self.weight
        self.weight = None
        self.held = held

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        if self.qweight is not None:
            return dequantize(self.qweight, self.scales, self.mins, dtype)
        return self.weight if self.held is None else self.held.dense()

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.qweight is not None and use_kernels(x):
            return linear_packed(x, self.qweight, self.scales, self.mins, bias)
        return linear(x, self.dense_weight(x.dtype), self.packed, bias)


class LinearBase(PackedWeight):
    def __init__(self, input_size: int, output_size: int, bias: bool, tp_dim: int | None):
        super().__init__()
        self.tp_dim, self.tp_rank, self.tp_size = tp_dim, tp_rank(), tp_size()
        self.weight = nn.Parameter(torch.empty(output_size, input_size))
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size))
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor):
        if self.tp_dim is not None and param.dim() > self.tp_dim:  # a row-parallel bias is not split
            shard = param.size(self.tp_dim)
            loaded = loaded.narrow(self.tp_dim, self.tp_rank * shard, shard)
        param.data.copy_(loaded)

    def pack_weights(self):
        self.packed = pack(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


class ColumnParallelLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, bias: bool = False, what: str = "output size"):
        super().__init__(input_size, divide(output_size, tp_size(), what), bias, 0)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input in one matmul (gate and up)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, "intermediate_size")

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int):
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        param.data.narrow(0, offset, size).copy_(loaded.chunk(self.tp_size, 0)[self.tp_rank])


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp = tp_size()
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp, "num_attention_heads")
        self.num_kv_heads = divide(num_kv_heads, tp, "num_key_value_heads")
        super().__init__(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str):
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size)}[shard_id]
        param.data.narrow(0, offset, size).copy_(loaded.chunk(self.tp_size, 0)[self.tp_rank])


class RowParallelLinear(LinearBase):
    """Input split across ranks; partial outputs are all-reduced (bias added once, on rank 0)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, what: str = "input size"):
        super().__init__(divide(input_size, tp_size(), what), output_size, bias, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce(self.matmul(x, self.bias if self.tp_rank == 0 else None))
