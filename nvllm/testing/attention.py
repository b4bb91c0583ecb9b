"""AttentionSuite: random paged inputs match the reference backend."""

import pytest
import torch

from nvllm import registry
from nvllm.attention.base import AttentionMetadata

from nvllm.testing.common import ComponentSuite


# (query_len, context_len) per sequence: context_len - query_len tokens are already in the cache
ATTENTION_CASES = {
    "prefill": [(1, 1), (7, 7), (33, 33)],
    "prefix-cached-prefill": [(5, 21), (16, 16), (3, 40), (1, 9)],
    "decode": [(1, 1), (1, 6), (1, 17), (1, 40)],
    "decode-beside-prefill": [(1, 30), (12, 12), (4, 19)],
}


class AttentionSuite(ComponentSuite):
    """Random paged inputs (shuffled block tables, garbage in unused slots, GQA): the output and the
    K/V written to the cache match the reference backend for prefill, prefix-cached prefill, decode
    and mixed batches, over two layers sharing one `prepare`."""

    family = "attention"
    # the backend whose output is taken as right
    reference: str = "sdpa"
    device: str = "cpu"
    dtypes: tuple = (torch.float32,)
    block_sizes: tuple = (4, 16)
    # (num_heads, num_kv_heads, head_dim)
    head_shapes: tuple = ((4, 2, 64), (2, 2, 32))
    # dtype -> (atol, rtol)
    tolerances = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}

    @pytest.mark.parametrize("case", ATTENTION_CASES)
    def test_matches_reference_on_paged_inputs(self, config, case):
        if self.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        device = torch.device(self.device)
        for dtype in self.dtypes:
            backend = registry.build("attention", config, device=device, dtype=dtype)
            reference = registry.build("attention", self.reference, device=device, dtype=dtype)
            for block_size in self.block_sizes:
                for shape in self.head_shapes:
                    self.compare(backend, reference, ATTENTION_CASES[case], block_size, shape, dtype, device)

    def compare(self, backend, reference, lens, block_size, shape, dtype, device):
        gen = torch.Generator().manual_seed(block_size * 1000 + sum(shape))
        num_heads, num_kv_heads, head_dim = shape
        tables, num_blocks = paged_block_tables(lens, block_size, gen)
        layers = []
        for _ in range(2):
            n = sum(q for q, _ in lens)
            cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
            layers.append([torch.randn(s, generator=gen).to(device, dtype) for s in (
                (n, num_heads, head_dim), (n, num_kv_heads, head_dim), (n, num_kv_heads, head_dim),
                cache_shape, cache_shape)])
        results = []
        for impl in (backend, reference):
            meta = attention_metadata(lens, tables, block_size, device)
            impl.prepare(meta, block_size)
            outs = []
            for q, k, v, k_cache, v_cache in layers:
                k_cache, v_cache = k_cache.clone(), v_cache.clone()
                outs.append((impl.forward(q, k, v, k_cache, v_cache, meta, head_dim ** -0.5), k_cache, v_cache))
            results.append(outs)
        atol, rtol = self.tolerances[dtype]
        where = f"lens={lens} block_size={block_size} heads={shape} {dtype}"
        for layer, ((out, kc, vc), (ref, ref_kc, ref_vc)) in enumerate(zip(*results)):
            assert out.shape == ref.shape, where
            torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol,
                                       msg=lambda m: f"{where} layer {layer}: {m}")
            assert torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc), f"{where} layer {layer}: K/V written differently"


def paged_block_tables(lens, block_size: int, gen) -> tuple[list[list[int]], int]:
    """Each sequence gets distinct blocks drawn from a shuffled cache with a few spare blocks."""
    needed = [-(-ctx // block_size) for _, ctx in lens]
    num_blocks = sum(needed) + 3
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    tables, start = [], 0
    for n in needed:
        tables.append(ids[start:start + n])
        start += n
    return tables, num_blocks


def attention_metadata(lens, tables, block_size: int, device) -> AttentionMetadata:
    """As the model runner builds it (nvllm/engine/model_runner.py)."""
    slots, cu = [], [0]
    for (q, ctx), table in zip(lens, tables):
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(ctx - q, ctx))
        cu.append(cu[-1] + q)
    width = max(len(t) for t in tables)
    padded = [t + [-1] * (width - len(t)) for t in tables]
    return AttentionMetadata(
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        context_lens=torch.tensor([ctx for _, ctx in lens], dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        query_lens=[q for q, _ in lens], context_lens_host=[ctx for _, ctx in lens],
        is_decode=max(q for q, _ in lens) == 1)
