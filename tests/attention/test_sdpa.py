"""sdpa on the failures the first GPU run showed: SDPA's output in a non-contiguous layout (CUDA's
kernels return one), decode's gathered copy bounded at any batch and table width, and the KV
cache sized for decode at the largest CUDA-graph bucket as well as for the largest prefill."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nvllm.attention import sdpa
from nvllm.attention.sdpa import SDPABackend, decode_groups
from tests.attention.conftest import make_batch, run, sdpa_reference


SDPA = F.scaled_dot_product_attention


def transposed_layout(*args, **kwargs):
    """SDPA's answer in the layout CUDA's kernels return: right values, not contiguous."""
    out = SDPA(*args, **kwargs)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("q_lens, ctx_lens", [([1] * 4, [1, 7, 16, 40]), ([5, 20], [9, 20])], ids=["decode", "prefill"])
def test_non_contiguous_sdpa_output(monkeypatch, q_lens, ctx_lens):
    batch = make_batch(q_lens, ctx_lens, 8, 8, 2, 16)
    want, *_ = sdpa_reference(batch)
    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", transposed_layout)
    assert not transposed_layout(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)).is_contiguous()
    got, *_ = run(SDPABackend, batch)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_decode_groups_bound_the_copy():
    # Qwen3-0.6B in bf16 at the top CUDA-graph bucket and max_model_len 4096: 8 GiB in one piece
    per_seq = 2 * 4096 * 8 * 128 * 2
    step = decode_groups(512, 4096, 8, 128, 2)
    assert step * per_seq <= sdpa.DECODE_GATHER_BYTES and step >= 1 and -(-512 // step) * step >= 512
    assert decode_groups(4, 16, 2, 16, 4) == 4  # small batches stay one piece
    assert decode_groups(8, 10**9, 8, 128, 4) == 1  # never zero


def test_decode_in_groups_matches_one_piece(monkeypatch):
    """A budget that forces one sequence per group: same answer, and no gather above the budget."""
    batch = make_batch([1] * 6, [1, 7, 8, 9, 30, 41], 8, 8, 2, 16)
    want, *_ = run(SDPABackend, batch)
    per_seq = 2 * batch.meta.block_tables.shape[1] * 8 * 2 * 16 * 4
    monkeypatch.setattr(sdpa, "DECODE_GATHER_BYTES", per_seq)
    gathered = []
    original = torch.Tensor.__getitem__

    def spy(self, index):
        out = original(self, index)
        if isinstance(index, torch.Tensor) and self.dim() == 4 and index.dim() == 2:
            gathered.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(torch.Tensor, "__getitem__", spy)
    got, *_ = run(SDPABackend, batch)
    monkeypatch.undo()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert len(gathered) == 2 * 6 and 2 * max(gathered) <= per_seq  # K and V, one sequence at a time


def test_sizing_measures_decode_at_the_largest_bucket(tiny_qwen3_path):
    """The warm-up the KV budget is cut from runs the largest prefill and a decode of the top
    CUDA-graph bucket with every sequence at max_model_len; the larger peak is kept."""
    from transformers import AutoConfig

    from nvllm.config import Config, EngineConfig, compose
    from nvllm.engine.model_runner import ModelRunner, warmup_steps
    from nvllm.forward.cudagraph import CUDAGraphForward, graph_batch_sizes
    from nvllm.forward.eager import EagerForward

    def strategy(cls, config):  # its decode_batch only: no model, no CUDA
        s = cls.__new__(cls)
        s.runner, s.sizes = SimpleNamespace(config=config), graph_batch_sizes(config.max_num_seqs)
        return s

    cuda = dataclasses.replace(EngineConfig(), max_num_seqs=512, max_model_len=4096,
                               max_num_batched_tokens=16384)  # what auto resolves to on CUDA
    prefill, decode = warmup_steps(cuda, 16, strategy(CUDAGraphForward, cuda).decode_batch)
    assert sum(len(t) for t, _, _ in prefill) == 16384
    assert len(decode) == graph_batch_sizes(512)[-1] == 512
    assert all(start + len(t) == 4096 and len(table) == 256 for t, start, table in decode)
    assert strategy(EagerForward, dataclasses.replace(cuda, max_num_seqs=64)).decode_batch == 64

    cfg = compose(model=tiny_qwen3_path, attention="sdpa", device="cpu", dtype="float32", max_num_seqs=12,
                  max_num_batched_tokens=128, max_model_len=128, kv_cache={"num_blocks": 8, "block_size": 8})
    config = Config.from_cfg(cfg).resolve(AutoConfig.from_pretrained(tiny_qwen3_path))
    runner = ModelRunner(config, tiny_qwen3_path)
    seen = []

    def measure(fn):  # stands in for CUDA's allocator statistics: which step ran, how much it would take
        before = len(seen)
        original = runner.attention.prepare
        runner.attention.prepare = lambda meta, bs: (seen.append(meta), original(meta, bs))[1]
        try:
            fn()
        finally:
            runner.attention.prepare = original
        meta = seen[before]
        return 1000 + 10 * len(meta.query_lens) if meta.is_decode else 500
    assert runner._peak_forward_bytes(measure) == 1000 + 10 * 12  # decode at 12 sequences beat the prefill
    prefill_meta, decode_meta = seen
    assert not prefill_meta.is_decode and decode_meta.is_decode
    assert decode_meta.context_lens_host == [128] * 12 and decode_meta.block_tables.shape == (12, 128 // 8)
    assert all(m.k_cache.numel() == 0 for m in runner._attention_layers())  # the stand-in cache is gone
    runner.close()

