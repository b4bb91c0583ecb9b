"""The Triton backend against `sdpa`: the store kernel, decode, prefill with and without a cached
prefix, GQA, odd block sizes, and greedy tokens end to end. On a CPU the kernels run in Triton's
interpreter (slow: shapes stay small); the cuda cases compare 16-bit kernels to float32 sdpa."""
import random
import subprocess
import sys

import pytest
import torch

from nvllm.config import ConfigError
from tests.attention.conftest import DEVICE_DTYPES, TOLERANCE, make_batch, run, sdpa_reference, triton_kernels
from tests.conftest import hf_greedy

# (heads, kv_heads, head_dim): the tiny test model's, GQA, MHA at 128, a group of 3 (padded to 4), MQA
SHAPES = [(4, 2, 16), (8, 2, 64), (4, 4, 128), (6, 2, 16), (4, 1, 64)]
SHAPE_IDS = [f"h{h}-kv{kv}-d{d}" for h, kv, d in SHAPES]


@pytest.fixture(params=DEVICE_DTYPES)
def device_dtype(request):
    device, dtype = request.param
    triton_kernels(device)
    return device, dtype


def check(batch, device_dtype, empty_cache=False):
    from nvllm.attention.triton import TritonBackend

    _, dtype = device_dtype
    out, k_cache, v_cache = run(TritonBackend, batch, dtype=dtype, empty_cache=empty_cache)
    want, want_k, want_v = sdpa_reference(batch, empty_cache=empty_cache)
    torch.testing.assert_close(out.float(), want, **TOLERANCE[dtype])
    # both stores write this step's K/V; the float32 reference holds the same rounded values
    torch.testing.assert_close(k_cache.float(), want_k, atol=0, rtol=0)
    torch.testing.assert_close(v_cache.float(), want_v, atol=0, rtol=0)


@pytest.mark.parametrize("kv_heads, head_dim", [(2, 16), (3, 64), (1, 128)])
def test_store_writes_slots_and_skips_padding(device_dtype, kv_heads, head_dim):
    from nvllm.attention.triton import store_kvcache

    device, dtype = device_dtype
    num_blocks, block_size, tokens = 6, 16, 40
    kv = torch.randn(tokens, 2 * kv_heads * head_dim + 8, device=device, dtype=dtype)  # views, like the models'
    k = kv[:, :kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    v = kv[:, kv_heads * head_dim:2 * kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=device)[:tokens]
    padding = torch.rand(tokens, device=device) < 0.3
    slots[padding] = -1
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_k.view(-1, kv_heads, head_dim)[slots[~padding]] = k[~padding]
    want_v.view(-1, kv_heads, head_dim)[slots[~padding]] = v[~padding]
    store_kvcache(k, v, k_cache, v_cache, slots)
    torch.testing.assert_close(k_cache, want_k, atol=0, rtol=0)
    torch.testing.assert_close(v_cache, want_v, atol=0, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("block_size", [8, 16, 12])
def test_decode(device_dtype, shape, block_size):
    """One query per sequence; contexts end just before, on and after block boundaries."""
    bs = block_size
    ctx_lens = [1, bs - 1, bs, bs + 1, 2 * bs + 3, 5 * bs]
    check(make_batch([1] * len(ctx_lens), ctx_lens, bs, *shape, device=device_dtype[0]), device_dtype)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=SHAPE_IDS[:3])
def test_prefill_without_cache(device_dtype, shape):
    """Whole prompts, some longer than one query tile (64 rows) and one KV tile (64 keys)."""
    lens = [1, 7, 16, 70, 130]
    check(make_batch(lens, lens, 16, *shape, device=device_dtype[0]), device_dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("block_size", [16, 12])
def test_prefill_with_cached_prefix(device_dtype, shape, block_size):
    """Prefix-cache hits and preempted-then-resumed sequences (q_len < ctx_len) batched with a
    fresh prompt and a one-token query."""
    q_lens, ctx_lens = [1, 5, 20, 33, 16], [17, 40, 20, 100, 80]
    check(make_batch(q_lens, ctx_lens, block_size, *shape, device=device_dtype[0]), device_dtype)


def check_split(batch, device_dtype, num_splits):
    """The split-K decode kernels (forced to `num_splits` chunks) against sdpa."""
    from nvllm.attention.triton import paged_attention, store_kvcache

    _, dtype = device_dtype
    cast = lambda t: t.to(dtype)  # noqa: E731
    q, k, v = cast(batch.q), cast(batch.k), cast(batch.v)
    k_cache, v_cache = cast(batch.k_cache).clone(), cast(batch.v_cache).clone()
    store_kvcache(k, v, k_cache, v_cache, batch.meta.slot_mapping)
    out = paged_attention(q, k, v, k_cache, v_cache, batch.meta, batch.scale, 1, num_splits)
    want, _, _ = sdpa_reference(batch)
    torch.testing.assert_close(out.float(), want, **TOLERANCE[dtype])
    return out


# (heads, kv_heads, head_dim) for split-K: GQA with a power-of-two group and with a group of 3; the rest is slow
SPLIT_SHAPES = [(4, 2, 16), (6, 2, 16)]


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=SHAPE_IDS[0:4:3])
@pytest.mark.parametrize("block_size", [16, 256])
def test_split_decode(device_dtype, shape, block_size):
    """Ragged contexts cut into 3 chunks: shorter than a chunk (empty chunks), across block
    boundaries, the own token alone in the last chunk."""
    bs = block_size
    ctx_lens = [1, 2, bs - 1, bs + 1, 70, 2 * bs + 3]
    check_split(make_batch([1] * len(ctx_lens), ctx_lens, bs, *shape, device=device_dtype[0]), device_dtype, 3)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("block_size", [16, 256])
@pytest.mark.parametrize("num_splits", [2, 8, 32])
def test_split_decode_every_shape(device_dtype, shape, block_size, num_splits):
    bs = block_size
    ctx_lens = [1, bs, 300, 2 * bs + 3, 5 * bs - 7]
    check_split(make_batch([1] * len(ctx_lens), ctx_lens, bs, *shape, device=device_dtype[0]), device_dtype, num_splits)


def test_split_decode_padding_rows_read_no_cache(device_dtype):
    """A CUDA-graph bucket's padding rows (context 1, no blocks, slot -1) read only their own K/V,
    whatever the split count; the real rows are unaffected."""
    from nvllm.attention.triton import paged_attention

    device, dtype = device_dtype
    real = make_batch([1, 1, 1], [40, 5, 130], 16, 4, 2, 16, device=device)
    padded = make_batch([1] * 5, [40, 5, 130, 1, 1], 16, 4, 2, 16, device=device)
    for name in ("q", "k", "v", "k_cache", "v_cache"):  # the same values in the real rows and blocks
        t = getattr(padded, name)
        t[:getattr(real, name).shape[0]] = getattr(real, name)
    meta = padded.meta
    meta.block_tables[3:] = -1
    meta.block_tables[:3] = real.meta.block_tables[:, :meta.block_tables.shape[1]]
    meta.slot_mapping[:3], meta.slot_mapping[3:] = real.meta.slot_mapping, -1
    out = check_split(real, device_dtype, 4)
    got = paged_attention(padded.q.to(dtype), padded.k.to(dtype), padded.v.to(dtype), padded.k_cache.to(dtype),
                          padded.v_cache.to(dtype), meta, padded.scale, 1, 4)
    torch.testing.assert_close(got[:3], out, atol=0, rtol=0)
    # context 1: the answer is the row's own V, for every query head of the group
    torch.testing.assert_close(got[3:].float(), padded.v[3:].repeat_interleave(2, dim=1).to(dtype).float(),
                               **TOLERANCE[dtype])


def test_decode_splits_heuristic():
    from nvllm.attention.triton import MAX_SPLITS, MIN_SPLIT, decode_splits

    h200 = 132
    assert decode_splits(256, 8, 4096, h200) == 1  # a big batch fills the GPU: the one-pass kernel
    assert decode_splits(1, 8, 4096, h200) == 4096 // MIN_SPLIT  # one long context: as many chunks as it is worth
    assert decode_splits(2, 8, 100_000, h200) == 17  # two waves of 132 programs over 2 x 8 (sequence, KV head)
    assert decode_splits(2, 1, 1 << 20, 10_000) == MAX_SPLITS
    assert decode_splits(1, 8, 100, h200) == 1  # too short to be worth cutting
    assert decode_splits(16, 8, 4096, 1) == 1  # a CPU (the interpreter): one "SM"
    # fewer sequences never means fewer chunks, a longer context never means fewer
    for batch in (1, 2, 4, 8, 16, 32, 64):
        assert decode_splits(batch, 8, 2048, h200) >= decode_splits(2 * batch, 8, 2048, h200)
        assert decode_splits(batch, 8, 8192, h200) >= decode_splits(batch, 8, 2048, h200)


def test_cuda_graph_buckets_get_one_split_count_each():
    """Captured graphs replay a fixed grid: the backend's count depends on the batch and the
    metadata's host context lengths, which a graph's metadata fixes at max_model_len."""
    from nvllm.attention.triton import TritonBackend, decode_splits
    from nvllm.forward.cudagraph import graph_batch_sizes

    backend = TritonBackend.__new__(TritonBackend)
    for n in graph_batch_sizes(64):
        meta = make_batch([1] * n, [1] * n, 16, 4, 2, 16).meta
        meta.context_lens_host = [4096] * n  # what CUDAGraphForward._graph_meta says
        backend.prepare(meta, 16)
        assert meta.extra["max_context"] == 4096
        assert decode_splits(n, 2, meta.extra["max_context"], 132) == decode_splits(n, 2, 4096, 132)


def test_warmup_pass_without_cache(device_dtype):
    """The model runner's memory-measuring pass runs before any cache exists."""
    lens = [9, 33]
    check(make_batch(lens, lens, 16, 4, 2, 16, device=device_dtype[0]), device_dtype, empty_cache=True)


def test_bfloat16_on_cpu_is_refused():
    """Triton's interpreter gets bfloat16 dot products wrong: refuse rather than answer garbage."""
    from nvllm.attention.triton import TritonBackend

    triton_kernels("cpu")
    with pytest.raises(ConfigError, match="dtype=float32"):
        TritonBackend(TritonBackend.Config(), device=torch.device("cpu"), dtype=torch.bfloat16)


def test_cpu_backend_warns_that_it_runs_interpreted(caplog):
    """Built on a CPU, the backend says once that its kernels run in Triton's interpreter and what that costs."""
    from nvllm.attention.triton import TritonBackend

    triton_kernels("cpu")
    with caplog.at_level("WARNING", logger="nvllm.attention.triton"):
        TritonBackend(TritonBackend.Config(), device=torch.device("cpu"), dtype=torch.float32)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Triton's interpreter" in warnings[0], warnings
    assert "slower than with attention=cpu or attention=sdpa" in warnings[0]


def test_registering_imports_no_kernel_package_and_cpu_needs_the_interpreter():
    """A fresh process: loading the plugins imports neither triton nor flash_attn (and, without
    a GPU, picks Triton's interpreter); a CPU backend after triton was imported compiled is
    refused, saying how to fix it."""
    pytest.importorskip("triton")
    script = """
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import torch
from nvllm import registry
from nvllm.config import ConfigError
from nvllm.plugins import load_plugins
load_plugins()
assert {"triton", "flash_attn"}.isdisjoint(sys.modules), sorted(m for m in sys.modules if "triton" in m)
assert torch.cuda.is_available() or os.environ["TRITON_INTERPRET"] == "1"
os.environ.pop("TRITON_INTERPRET")
import triton
try:
    registry.build("attention", "triton", device=torch.device("cpu"), dtype=torch.float32)
except ConfigError as e:
    assert "TRITON_INTERPRET=1" in str(e), e
    print("refused")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stderr


MAX_NEW = 8


@pytest.mark.slow
def test_greedy_tokens_match_sdpa_and_hf(tiny_qwen3_path):
    """The tiny qwen3 checkpoint with prefix caching and a cache too small for the batch (so
    sequences are preempted and recomputed, hitting their own cached blocks)."""
    triton_kernels("cpu")
    from nvllm import LLM, SamplingParams

    rng = random.Random()
    shared = [rng.randrange(512) for _ in range(20)]
    prompts = [shared + [rng.randrange(512) for _ in range(n)] for n in (1, 9, 14)]
    prompts += [prompts[1], [rng.randrange(512) for _ in range(3)]]
    greedy = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)

    def generate(attention):
        with LLM(tiny_qwen3_path, attention=attention, device="cpu", max_model_len=64, max_num_batched_tokens=256,
                 kv_cache={"block_size": 16, "num_blocks": 6, "prefix_caching": True}) as llm:
            outputs = llm.generate(prompts, greedy, use_tqdm=False)
            return [o.outputs[0].token_ids for o in outputs], llm.engine.scheduler.num_preemptions, llm.engine.kv_cache.hit_rate

    got, preemptions, hit_rate = generate("triton")
    assert preemptions > 0 and hit_rate > 0
    assert got == generate("sdpa")[0]
    assert got == hf_greedy(tiny_qwen3_path, prompts, MAX_NEW)


@pytest.mark.slow
def test_greedy_tokens_with_split_decode_match_hf(tiny_qwen3_path, monkeypatch):
    """End to end with the split-K decode kernels: a pretend GPU with many SMs makes the heuristic
    cut the small batch's contexts into chunks."""
    triton_kernels("cpu")
    from nvllm import LLM, SamplingParams
    from nvllm.attention import triton as triton_backend

    monkeypatch.setattr(triton_backend, "num_sms", lambda device: 64)
    monkeypatch.setattr(triton_backend, "MIN_SPLIT", 16)
    rng = random.Random(7)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (40, 3)]
    greedy = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    with LLM(tiny_qwen3_path, attention="triton", device="cpu", max_model_len=64, max_num_batched_tokens=256,
             kv_cache={"block_size": 16}) as llm:
        assert triton_backend.decode_splits(2, 2, 48, triton_backend.num_sms(None)) > 1
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    assert got == hf_greedy(tiny_qwen3_path, prompts, MAX_NEW)


@pytest.mark.gpu
def test_greedy_tokens_match_sdpa_on_cuda(tiny_qwen3_path):
    """Compiled kernels in float32 (where tokens must agree exactly), with whatever the engine
    does on CUDA by default, CUDA graphs included."""
    triton_kernels("cuda")
    from nvllm import LLM, SamplingParams

    rng = random.Random()
    shared = [rng.randrange(512) for _ in range(40)]
    prompts = [shared + [rng.randrange(512) for _ in range(n)] for n in (1, 20, 70, 150)] + [shared]
    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)

    def generate(attention):
        with LLM(tiny_qwen3_path, attention=attention, device="cuda", dtype="float32", max_model_len=512,
                 kv_cache={"block_size": 16, "num_blocks": 24, "prefix_caching": True}) as llm:
            return [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]

    assert generate("triton") == generate("sdpa")
