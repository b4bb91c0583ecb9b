"""The quantized matmul kernels (nvllm/kernels/quantized.c) read the shared int8 and int4 block
layout (int4's scales and minimums in float16, or float32 as GGUF Q4_K's are held) and compute x
times the dequantized float32 weights, in the AVX-512 build, the AVX2 one and the portable C; the
layout is built here by a small quantizer written from its definition."""
import pytest
import torch

from nvllm.kernels import OLDER_CPUS, quantized

BLOCK = 32


def quantize_int8(w: torch.Tensor):
    """Symmetric per block of 32: d = max|w| / 127 (rounded to float16), q = round(w / d) in [-127, 127]."""
    blocks = w.view(w.shape[0], -1, BLOCK)
    d = (blocks.abs().amax(-1) / 127).half()
    q = (blocks / d.float().clamp_min(1e-30)[..., None]).round().clamp(-127, 127).to(torch.int8)
    return q.view_as(w), d


def dequantize_int8(q, d):
    return (q.view(q.shape[0], -1, BLOCK).float() * d.float()[..., None]).view(q.shape)


def quantize_int4(w: torch.Tensor, q4_0: bool = False):
    """Per block of 32: w = q * d + m, q in 0..15 (Q4_1: m = min, d = (max - min) / 15; Q4_0: m = -8 d,
    d = max|w| / 7); byte i of a block holds q[i] (low nibble) and q[i + 16] (high nibble)."""
    blocks = w.view(w.shape[0], -1, BLOCK)
    if q4_0:
        d = (blocks.abs().amax(-1) / 7).half()
        m = (-8 * d.float()).half()
    else:
        lo, hi = blocks.amin(-1), blocks.amax(-1)
        d, m = ((hi - lo) / 15).half(), lo.half()
    q = ((blocks - m.float()[..., None]) / d.float().clamp_min(1e-30)[..., None]).round().clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(w.shape[0], -1), d, m


def dequantize_int4(packed, d, m):
    blocks = packed.view(packed.shape[0], -1, 16)
    q = torch.cat([blocks & 0xF, blocks >> 4], dim=-1).float()
    return (q * d.float()[..., None] + m.float()[..., None]).view(packed.shape[0], -1)


# native, an AVX2-only CPU's, AVX2 with AVX-VNNI (8-lane vpdpbusd: where this CPU has it), portable C
BUILDS = {"native": "", **OLDER_CPUS, "avx-vnni": "-mno-avx512f"}
ISA = {"avx2": "avx2", "portable": "portable", "avx-vnni": "vnni"}  # each build's int8_dot_isa


@pytest.fixture(params=BUILDS)
def build(request, monkeypatch):
    """The kernels as compiled for this CPU, without AVX-512 (an AVX2-only CPU's build; with AVX-VNNI
    where this CPU has it), and without AVX2 (the portable C)."""
    if request.param == "avx-vnni" and " avx_vnni " not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no AVX-VNNI")
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", BUILDS[request.param])
    quantized._library.cache_clear()
    yield request.param
    quantized._library.cache_clear()


@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_matmuls_equal_the_dequantized_float32_matmul(build, rows):
    torch.manual_seed(rows)
    n, k = 70, 256  # N not a multiple of anything; K eight blocks
    w, x = torch.randn(n, k), torch.randn(rows, k)
    q, d = quantize_int8(w)
    want = x @ dequantize_int8(q, d).T
    torch.testing.assert_close(quantized.linear_int8(x, q, d), want, rtol=1e-5, atol=1e-4)
    assert (dequantize_int8(q, d) - w).abs().max() < w.abs().max() / 100  # the quantizer is sane
    for q4_0 in (False, True):
        packed, d, m = quantize_int4(w, q4_0)
        want = x @ dequantize_int4(packed, d, m).T
        torch.testing.assert_close(quantized.linear_int4(x, packed, d, m), want, rtol=1e-5, atol=1e-4)
    assert quantized.linear_int8(x[0], *quantize_int8(w)).shape == (n,)  # a vector in, a vector out


@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_int4_with_float32_scales_equals_the_dequantized_float32_matmul(build, rows):
    """GGUF Q4_K's sub-blocks: scale d * sc and minimum -dmin * m (float16 d, dmin times 6-bit sc, m),
    float32 values float16 cannot hold, read as float32."""
    torch.manual_seed(rows)
    n, k = 70, 512
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    supers = k // 256  # a super-block's d and dmin, and its 8 sub-blocks' sc and m
    d, dmin = ((torch.rand(n, supers, 1) * 1e-2).half().float() for _ in range(2))
    scales = (d * torch.randint(0, 64, (n, supers, 8))).reshape(n, -1)
    mins = -(dmin * torch.randint(0, 64, (n, supers, 8))).reshape(n, -1)
    assert (scales.half().float() != scales).any()  # not float16 values
    x = torch.randn(rows, k)
    want = x @ dequantize_int4(packed, scales, mins).T
    torch.testing.assert_close(quantized.linear_int4(x, packed, scales, mins), want, rtol=1e-5, atol=1e-4)
    e0 = torch.zeros(1, k)  # each weight itself, exactly: q * d is exact in float32, + m rounds once
    for i in (0, 17, 32 + 5, k - 1):
        e0.zero_()
        e0[0, i] = 1
        want = dequantize_int4(packed, scales, mins)[:, i]
        assert torch.equal(quantized.linear_int4(e0, packed, scales, mins)[0], want)


def test_bad_shapes_are_refused_naming_the_tensor():
    with pytest.raises(ValueError, match="48 input features, not a multiple of 32 .* leave this weight unquantized"):
        quantized.linear_int8(torch.randn(1, 48), torch.zeros(4, 48, dtype=torch.int8), torch.zeros(4, 1).half())
    q, d = quantize_int8(torch.randn(4, 64))
    with pytest.raises(ValueError, match=r"scales: expected a CPU float16 tensor of shape \[4, 2\], got float32"):
        quantized.linear_int8(torch.randn(1, 64), q, d.float())
    packed, d, m = quantize_int4(torch.randn(4, 64))
    with pytest.raises(ValueError, match=r"mins: expected a CPU float32 tensor of shape \[4, 2\], got float16"):
        quantized.linear_int4(torch.randn(1, 64), packed, d.float(), m)


def test_every_finite_float16_scale_is_read_exactly(build):
    """A row per float16 bit pattern, q = 1 at k = 0 and x = e0: y is the scale itself (subnormals,
    all), as torch widens it (a zero's sign aside: the sum adds +0 terms)."""
    scales = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    scales = scales[scales.isfinite()].reshape(-1, 1)
    q = torch.zeros(len(scales), BLOCK, dtype=torch.int8)
    q[:, 0] = 1
    x = torch.zeros(1, BLOCK)
    x[0, 0] = 1
    y = quantized.linear_int8(x, q, scales)[0]
    assert (y == scales[:, 0].float()).all()


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Each block of 32 rounded to int8 with its own scale (Q8_0's: max |x| / 127), as floats again."""
    blocks = x.view(x.shape[0], -1, BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    q = torch.round(blocks * torch.where(amax > 0, 127 / amax, 0)).clamp(-127, 127)
    return (q.double() * (amax.double() / 127)).view_as(x)


@pytest.mark.parametrize("rows", [1, 3, 8, 13, 29])
@pytest.mark.parametrize("fmt", ["int8", "q4_1", "q4_0", "int4-float32"])
@pytest.mark.parametrize("k", [256, 96, 576])
def test_int8_activations_equal_the_rounded_activations_times_the_dequantized_weights(build, rows, fmt, k):
    """activations="int8": each block of 32 of x rounded to int8 with its own scale, a block's products
    summed exactly in int32 (vpdpbusd, vpmaddubsw or C, as the build has them), then scaled: x's
    rounded blocks times the dequantized weights. k = 96 and 576 leave blocks past the last full step
    of the AVX-512 kernel (2 blocks of int8 a step, 4 of int4); 29 rows take its repacked panels of
    16 features (n = 70: a last panel of 6)."""
    torch.manual_seed(rows)
    n = 70
    w, x = torch.randn(n, k), torch.randn(rows, k) * torch.logspace(-2, 2, rows)[:, None]
    x[0, :40] = 0  # a block of zeros, and zeros in the next
    if fmt == "int8":
        q, d = quantize_int8(w)
        dequantized = dequantize_int8(q, d)
        got = quantized.linear_int8(x, q, d, activations="int8")
    else:
        q, d, m = quantize_int4(w, q4_0=fmt == "q4_0")
        if fmt == "int4-float32":
            d, m = d.float() * 1.0001, m.float() * 0.9999  # values float16 cannot hold
        dequantized = dequantize_int4(q, d, m)
        got = quantized.linear_int4(x, q, d, m, activations="int8")
    want = quantize_activations(x) @ dequantized.double().T
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    exact = x @ dequantized.T  # what the rounding of the activations costs: a little
    assert ((got - exact).abs().amax(-1) < 0.02 * exact.abs().amax(-1)).all()
    assert quantized.linear_int8(torch.zeros(1, k), *quantize_int8(w), activations="int8").abs().max() == 0
    if build != "native":  # AVX2 only: vpmaddubsw; with AVX-VNNI: its vpdpbusd; without AVX2: C
        assert quantized.int8_dot_isa() == ISA[build]


def test_int8_dot_products_use_vnni_where_the_cpu_has_it():
    flags = open("/proc/cpuinfo").read()
    vnni = " avx512_vnni " in flags and " avx512vl " in flags or " avx_vnni " in flags
    assert quantized.int8_dot_isa() == ("vnni" if vnni else "avx2" if " avx2 " in flags else "portable")
