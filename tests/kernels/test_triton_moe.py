"""The Triton fused MoE (nvllm/kernels/triton_moe.py) against the MoE layer's torch forward
(nvllm/models/layers/moe.py), which test_moe.py checks against transformers' blocks: several token
counts (one token, runs of one expert longer than a block, the wider blocks of a prefill), top-k 1
and 2, renormalised or not, and a rank of expert parallelism. On a CPU the kernels run in Triton's
interpreter; the cuda cases also capture the layer in a CUDA graph and replay it on other tokens."""
import pytest
import torch

from nvllm.models.layers.moe import FusedMoE, route
from nvllm.models.layers.packed import quantize_int4, quantize_int8
from tests.attention.conftest import DEVICE_DTYPES, TOLERANCE, triton_kernels

# float16 takes bfloat16's path through the kernels: left out, so that the device check's kernels
# part compiles fewer of them within its cap
KERNEL_DEVICE_DTYPES = [p for p in DEVICE_DTYPES if p.id != "cuda-float16"]

EXPERTS, HIDDEN, INTER = 8, 40, 24  # a hidden size and widths off the 32/64 blocks


@pytest.fixture(params=KERNEL_DEVICE_DTYPES)
def device_dtype(request):
    device, dtype = request.param
    triton_kernels(device)
    return device, dtype


def layer(top_k: int, renormalize: bool, seed: int = 0, scores_in_float32: bool = False) -> FusedMoE:
    moe = FusedMoE(EXPERTS, top_k, HIDDEN, INTER, renormalize=renormalize, scores_in_float32=scores_in_float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in moe.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return moe


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_layer_on_cuda_is_captured_in_a_cuda_graph_and_replays_other_tokens():
    from nvllm.kernels.triton_mode import compiles_for

    assert compiles_for(torch.device("cuda")), "Triton cannot compile here: the layer would fall back to torch"
    moe = layer(2, True, seed=3)
    xs = [torch.randn(8, HIDDEN, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with torch.no_grad():
        wants = [moe(x) for x in xs]  # the CPU's torch code
        moe.cuda()
        static = xs[0].cuda()
        moe(static)  # compile the kernels outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = moe(static)
        for x, want in zip(xs, wants):
            static.copy_(x)
            graph.replay()
            torch.testing.assert_close(out.cpu(), want, **TOLERANCE[torch.float32])


def both_forwards(moe: FusedMoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(torch's, Triton's) experts' sums for x on one routing, as FusedMoE.forward routes it."""
    scores, experts = route(moe.gate(x), moe.top_k, moe.renormalize)
    if not moe.scores_in_float32:
        scores = scores.to(x.dtype)
    return moe.experts_torch(x, scores, experts), moe.experts_triton(x, scores, experts)


@pytest.mark.parametrize("tokens", [1, 3, 70, 300])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("renormalize", [True, False], ids=["renormalize", "raw-scores"])
def test_equals_the_layers_torch_forward(device_dtype, tokens, top_k, renormalize):
    device, dtype = device_dtype
    moe = layer(top_k, renormalize, seed=tokens).to(device, dtype)
    x = torch.randn(tokens, HIDDEN, generator=torch.Generator().manual_seed(tokens + top_k)).to(device, dtype)
    with torch.no_grad():
        want, got = both_forwards(moe, x)
        if device == "cpu":  # where the layer's own forward runs the torch code
            assert torch.equal(moe(x), want)
        if tokens == 70:  # the case meant to hold runs longer than a block of 16
            _, experts = route(moe.gate(x), top_k, renormalize)
            assert torch.bincount(experts.flatten()).max() > 16
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[dtype])


@pytest.mark.parametrize("tokens, top_k", [(1, 2), (70, 2), (300, 1)])
@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4], ids=["int8", "int4"])
def test_packed_experts_equal_the_layers_torch_forward_on_their_dequantized_weights(device_dtype, quantize, tokens,
                                                                                    top_k):
    """quantization=int8 and int4's experts (FusedMoE.quantize): the kernels read the packed bytes and
    dequantize in registers; the torch forward multiplies by each chosen expert's dequantized weights.
    A hidden size off the 64-column blocks, so the down projection's last block is partial."""
    device, dtype = device_dtype
    moe = FusedMoE(EXPERTS, top_k, 96, 32, renormalize=True)
    gen = torch.Generator().manual_seed(tokens)
    with torch.no_grad():
        for param in moe.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    moe.quantize(quantize)
    assert moe.w13 is None and moe.w13_qweight.shape[:2] == (EXPERTS, 64) and moe.w2_scales.shape == (EXPERTS, 96, 1)
    moe.to(device)  # the packed tensors keep their dtypes; the router and activations in `dtype`
    moe.gate.to(dtype)
    x = torch.randn(tokens, 96, generator=gen).to(device, dtype)
    with torch.no_grad():
        want, got = both_forwards(moe, x)
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[dtype])


def test_an_expert_parallel_rank_adds_only_its_experts():
    """Rank 1 of 2 holding experts 4-7, as moe.expert_parallel=true places them: the pairs routed to
    experts 0-3 add nothing, in both forwards."""
    triton_kernels("cpu")
    full = layer(2, True, seed=5, scores_in_float32=True)
    rank = layer(2, True, seed=5, scores_in_float32=True)
    rank.first_expert, rank.num_local_experts = 4, 4
    rank.w13, rank.w2 = torch.nn.Parameter(full.w13[4:].clone()), torch.nn.Parameter(full.w2[4:].clone())
    x = torch.randn(50, HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = both_forwards(rank, x)
        assert not torch.allclose(want, full(x), atol=1e-3)  # the other rank's experts were chosen too
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("tokens, top_k, block_m", [(1, 1, 16), (9, 2, 16), (200, 4, 16), (300, 2, 64)])
def test_align_puts_every_pair_once_in_a_block_of_its_expert(tokens, top_k, block_m):
    from nvllm.kernels.triton_moe import align

    gen = torch.Generator().manual_seed(tokens)
    experts = torch.stack([torch.randperm(EXPERTS, generator=gen)[:top_k] for _ in range(tokens)])
    first, local = 2, 5  # a rank holding experts 2-6
    pair_ids, block_expert = align(experts, local, first, block_m)
    flat = experts.flatten()
    blocks = pair_ids.view(-1, block_m)
    assert block_expert.shape == (blocks.shape[0],)
    seen = []
    for ids, expert in zip(blocks.tolist(), block_expert.tolist()):
        real = [i for i in ids if i != flat.numel()]
        if expert < local:
            assert real and all(flat[i] == first + expert for i in real)
            seen += real
    mine = [i for i, e in enumerate(flat.tolist()) if first <= e < first + local]
    assert sorted(seen) == mine
    assert block_expert.tolist() == sorted(block_expert.tolist())  # runs in expert order


def test_routing_and_the_sort_read_nothing_back_to_the_host():
    """What a CUDA graph needs of the torch ops around the kernels: no value read on the host and no
    shape that depends on data. Tensors on the meta device hold no data, so those ops fail there,
    as the layer's torch code does (its group sizes)."""
    from nvllm.kernels.triton_moe import align

    moe = layer(2, True).to("meta")
    x = torch.empty(9, HIDDEN, device="meta")
    with torch.no_grad():
        scores, experts = route(moe.gate(x), 2, True)
        pair_ids, block_expert = align(experts, EXPERTS, 0, 16)
        # 18 pairs: the grid's worst case, 18 // 16 full blocks and a part-block for each of the 9 runs
        assert (pair_ids.shape, block_expert.shape) == ((16 * 10,), (10,))
        with pytest.raises(NotImplementedError, match="bincount"):
            moe.experts_torch(x, scores, experts)
