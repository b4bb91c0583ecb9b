"""The Triton weight-only matmuls (nvllm/kernels/triton_quantized.py) against x @ the dequantized
weight (nvllm/models/layers/packed.py) for int8, int4 (Q4_1's scale and minimum), Q4_0's
minimum of -8 d and int4 with float32 scales and minimums (Q4_K's d * sc and -dmin * m): one row,
a few, and counts of rows, outputs and inputs that are no multiple of the block sizes. On a CPU they run in Triton's interpreter; the cuda cases also run the linear
layer, which takes the kernels on CUDA."""
import pytest
import torch

from nvllm.models.layers.packed import GROUP, dequantize, quantize_int4, quantize_int8
from tests.attention.conftest import DEVICE_DTYPES, TOLERANCE, triton_kernels

# float16 takes bfloat16's path through the kernels: left out, so that the device check's kernels
# part compiles fewer of them within its cap
KERNEL_DEVICE_DTYPES = [p for p in DEVICE_DTYPES if p.id != "cuda-float16"]

# (rows, N, K): a decode row; a few rows; rows, N and K off the 16/64 blocks; a K of one group
SHAPES = [(1, 64, 128), (3, 100, 96), (17, 48, 160), (70, 130, 32)]


def random_layout(fmt: str, n: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Packed tensors drawn over every value the layout can hold (not only what a quantizer makes)."""
    scales = (torch.rand(n, k // GROUP, generator=gen) * 0.1).half()
    if fmt == "int8":
        return {"qweight": torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), "scales": scales}
    qweight = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    if fmt == "q4_k":  # a float16 d and dmin times 6-bit integers, in float32
        d = (scales / 64).float()
        sc, m = (torch.randint(0, 64, (n, k // GROUP), generator=gen).float() for _ in range(2))
        return {"qweight": qweight, "scales": d * sc, "mins": -(d * 8 * m)}
    mins = (scales.float() * -8).half() if fmt == "q4_0" else (torch.randn(n, k // GROUP, generator=gen) * 0.1).half()
    return {"qweight": qweight, "scales": scales, "mins": mins}


@pytest.fixture(params=KERNEL_DEVICE_DTYPES)
def device_dtype(request):
    device, dtype = request.param
    triton_kernels(device)
    return device, dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
def test_a_packed_linear_layer_on_cuda_runs_the_kernel(quantize):
    from nvllm.kernels.triton_mode import compiles_for
    from nvllm.models.layers.linear import RowParallelLinear

    assert compiles_for(torch.device("cuda")), "Triton cannot compile here: the layer would fall back to torch"
    layer = RowParallelLinear(96, 40, bias=True)
    torch.nn.init.normal_(layer.bias)
    packed = quantize(torch.randn(40, 96))
    layer.quantize(packed)
    x = torch.randn(3, 96)
    want = torch.nn.functional.linear(x, layer.dense_weight(torch.float32), layer.bias)
    got = layer.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("fmt", ["int8", "int4", "q4_0", "q4_k"])
@pytest.mark.parametrize("rows, n, k", SHAPES, ids=[f"m{m}-n{n}-k{k}" for m, n, k in SHAPES])
def test_equals_x_times_the_dequantized_weight(device_dtype, fmt, rows, n, k):
    from nvllm.kernels.triton_quantized import linear_packed

    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    packed = random_layout(fmt, n, k, gen)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    want = x.float() @ dequantize(packed["qweight"], packed["scales"], packed.get("mins"), dtype).float().T
    on = {key: t.to(device) for key, t in packed.items()}
    got = linear_packed(x.to(device), on["qweight"], on["scales"], on.get("mins"))
    assert got.dtype == dtype and got.shape == (rows, n)
    torch.testing.assert_close(got.float().cpu(), want, **TOLERANCE[dtype])


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
def test_a_quantized_weight_with_a_bias_and_batch_dimensions(device_dtype, quantize):
    from nvllm.kernels.triton_quantized import linear_packed

    device, dtype = device_dtype
    gen = torch.Generator().manual_seed(7)
    packed = quantize(torch.randn(40, 64, generator=gen))
    x, bias = torch.randn(2, 5, 64, generator=gen).to(dtype), torch.randn(40, generator=gen).to(dtype)
    weight = dequantize(packed["qweight"], packed["scales"], packed.get("mins"), dtype)
    want = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
    on = {key: t.to(device) for key, t in packed.items()}
    got = linear_packed(x.to(device), on["qweight"], on["scales"], on.get("mins"), bias.to(device))
    assert got.shape == (2, 5, 40)
    torch.testing.assert_close(got.float().cpu(), want, **TOLERANCE[dtype])


def test_a_k_off_the_groups_is_refused():
    from nvllm.kernels.triton_quantized import linear_packed

    triton_kernels("cpu")
    packed = quantize_int8(torch.randn(8, 64))
    with pytest.raises(ValueError, match=r"x has 48 input features .* expected \[8, 1\] with k a multiple of 32"):
        linear_packed(torch.randn(2, 48), packed["qweight"], packed["scales"], None)
