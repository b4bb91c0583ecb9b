"""The built-in components pass the conformance suites that plugin packages subclass."""
import torch
import torch.nn.functional as F

from nvllm import registry
from nvllm.testing import (ATTENTION_CASES, AttentionSuite, ForwardSuite, KVCacheSuite, ModelSuite, SamplerSuite,
                           SchedulerSuite, attention_metadata, paged_block_tables)


class TestFCFS(SchedulerSuite):
    name = "fcfs"


class TestPaged(KVCacheSuite):
    name = "paged"
    configs = [{"prefix_caching": True}, {"prefix_caching": False}]


class TestSDPA(AttentionSuite):
    name = "sdpa"

    def test_reference_matches_naive_attention(self):
        """The suite's reference, checked against attention written out position by position."""
        sdpa = registry.build("attention", "sdpa", device=torch.device("cpu"), dtype=torch.float32)
        gen = torch.Generator().manual_seed(0)
        for lens in ATTENTION_CASES.values():
            tables, num_blocks = paged_block_tables(lens, 4, gen)
            n = sum(q for q, _ in lens)
            q, k, v = (torch.randn(n, h, 8, generator=gen) for h in (4, 2, 2))
            k_cache, v_cache = (torch.randn(num_blocks, 4, 2, 8, generator=gen) for _ in range(2))
            meta = attention_metadata(lens, tables, 4, torch.device("cpu"))
            sdpa.prepare(meta, 4)
            out = sdpa.forward(q, k, v, k_cache, v_cache, meta, 0.5)
            start = 0
            for (q_len, ctx), table in zip(lens, tables):
                slots = [table[p // 4] * 4 + p % 4 for p in range(ctx)]
                keys = k_cache.view(-1, 2, 8)[slots].repeat_interleave(2, dim=1)  # GQA: 2 query heads per KV head
                values = v_cache.view(-1, 2, 8)[slots].repeat_interleave(2, dim=1)
                for i in range(q_len):
                    visible = ctx - q_len + i + 1
                    scores = torch.einsum("hd,thd->ht", q[start + i], keys[:visible]) * 0.5
                    want = torch.einsum("ht,thd->hd", F.softmax(scores, dim=-1), values[:visible])
                    torch.testing.assert_close(out[start + i], want, atol=1e-5, rtol=1e-5)
                start += q_len


class TestCPU(AttentionSuite):
    """The C decode kernel: head sizes it unrolls (64, 128) and one it does not (32), groups of 1-4."""
    name = "cpu"
    head_shapes = ((9, 3, 64), (4, 1, 128), (2, 2, 32), (8, 2, 40))
    block_sizes = (1, 4, 16)


class TestDefaultSampler(SamplerSuite):
    name = "default"


class TestLlama(ModelSuite):
    name = "llama"


class TestQwen3(ModelSuite):
    name = "qwen3"


class TestEager(ForwardSuite):
    name = "eager"
    configs = [{"onednn": True}, {"onednn": False}]


class TestEagerSDPA(ForwardSuite):
    name = "eager"
    overrides = {"attention": "sdpa"}


class TestFusedCPU(ForwardSuite):
    """The C step: prefill in C (max_prefill_context covers every prompt) and eagerly (it covers none)."""
    name = "fused_cpu"
    overrides = {"attention": "cpu"}
    configs = [{}, {"max_prefill_context": 0}]


class TestCUDAGraph(ForwardSuite):
    name = "cudagraph"
    device = "cuda"
