"""The built-in components pass the conformance suites that plugin packages subclass."""
import torch
import torch.nn.functional as F

from nvllm import registry
from nvllm.testing import (ATTENTION_CASES, AttentionSuite, DrafterSuite, ForwardSuite, KVCacheSuite, ModelSuite,
                           QuantizationSuite, write_gguf,
                           SamplerSuite, SchedulerSuite, WorkloadSuite, attention_metadata, paged_block_tables)


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


class TestQwen3Moe(ModelSuite):
    name = "qwen3_moe"


class TestQwen2(ModelSuite):
    """Qwen2 runs on the qwen3 architecture: biases on q/k/v (random, so dropping one shows), no QK-norm."""
    name = "qwen3"
    checkpoint_overrides = {"hf_config_class": "Qwen2Config"}


class TestQwen3CUDA(ModelSuite):
    """eager and cudagraph on a CUDA device, float32, against transformers on the CPU."""
    name = "qwen3"
    device = "cuda"


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


class TestFusedCPUMoE(ForwardSuite):
    """The C step on a mixture of experts (a dense layer, then experts): routing and the chosen experts in C."""
    name = "fused_cpu"
    model = "qwen3_moe"
    overrides = {"attention": "cpu"}


class TestCUDAGraph(ForwardSuite):
    name = "cudagraph"
    device = "cuda"


class TestSimulated(ForwardSuite):
    """No tensors: the roofline of this CPU, and a GPU entry at another dtype."""
    name = "simulated"
    configs = [{}, {"hardware": "h100"}]


class TestRandomWorkload(WorkloadSuite):
    name = "random"
    configs = [{"num_seqs": 4, "input_len": [3, 9], "output_len": [2, 4]},
               {"num_seqs": 4, "input_len": [3, 9], "output_len": [2, 4], "request_rate": 2.0}]


class TestSharedPrefixWorkload(WorkloadSuite):
    name = "shared_prefix"
    configs = [{"num_seqs": 4, "prefix_len": 16}]


class TestChatWorkload(WorkloadSuite):
    name = "chat"


class TestGroundedWorkload(WorkloadSuite):
    name = "grounded"


class TestFileWorkload(WorkloadSuite):
    name = "file"
    configs = [{"chat": True}, {"chat": False}]

    def setup_files(self, tmp_path):
        (tmp_path / "prompts.txt").write_text("first prompt\nsecond prompt\n")
        return {"path": str(tmp_path / "prompts.txt")}


class TestTraceWorkload(WorkloadSuite):
    name = "trace"

    def setup_files(self, tmp_path):
        (tmp_path / "trace.jsonl").write_text('{"arrival": 1.0, "input_len": 4, "output_len": 2}\n'
                                              '{"arrival": 1.5, "prompt": "hello", "output_len": 3}\n')
        return {"path": str(tmp_path / "trace.jsonl")}


class TestShareGPTWorkload(WorkloadSuite):
    name = "sharegpt"

    def setup_files(self, tmp_path):
        import json

        turns = [[{"from": "human", "value": f"Question number {i}: tell me about the number {i}."},
                  {"from": "gpt", "value": f"The number {i} is a number that comes after {i - 1}."}] for i in range(1, 4)]
        (tmp_path / "sharegpt.json").write_text(json.dumps([{"conversations": t} for t in turns]))
        return {"path": str(tmp_path / "sharegpt.json"), "num_seqs": 2}


class TestNgram(DrafterSuite):
    name = "ngram"
    configs = [{}, {"prompt_lookup_min": 1, "num_speculative_tokens": 8, "max_num_draft_tokens": 64}]


class TestDraft(DrafterSuite):
    """The self-speculative drafter: one of the tiny model's two layers, and both (a draft that
    always agrees with the target)."""
    name = "draft"
    configs = [{"num_layers": 1}, {"num_layers": 2, "num_speculative_tokens": 2}]


class TestNoSpeculation(DrafterSuite):
    name = "none"


class TestNoQuantization(QuantizationSuite):
    name = "none"


class TestInt8(QuantizationSuite):
    name = "int8"


class TestInt4(QuantizationSuite):
    name = "int4"


class TestInt4Qwen3(QuantizationSuite):
    """Biases and QK-norm beside packed weights."""
    name = "int4"
    model = "qwen3"


class TestGGUF(QuantizationSuite):
    """A tiny GGUF file written by gguf's own quantizer, Q8_0 blocks."""
    name = "gguf"

    def setup_files(self, checkpoint, tmp_path):
        return {"file": write_gguf(checkpoint, str(tmp_path / "model.gguf"), "Q8_0")}
