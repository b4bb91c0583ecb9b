"""forward=cudagraph: decode steps replay CUDA graphs captured once per batch-size bucket
(1, 2, 4, 8, then every 16 up to max_num_seqs, at most 512), so a step launches one graph instead
of every kernel of every layer. A decode batch runs in the smallest bucket that holds it, padded
with dummy sequences (cache slot -1, context 1) and block tables padded to max_model_len's width;
prefills and larger batches run eagerly. All graphs share one memory pool and one set of static
input tensors, filled in before each replay. A mixture of experts is captured through its Triton
fused MoE (nvllm/kernels/triton_moe.py), so it needs Triton compiling for CUDA."""
import bisect
from dataclasses import dataclass

import torch

from nvllm.attention.base import AttentionMetadata, forward_context
from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget, logits_rows
from nvllm.forward.eager import EagerForward
from nvllm.hookspecs import hookimpl
from nvllm.kernels.triton_mode import why_no_compiled_kernels


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """Decode CUDA-graph buckets: 1, 2, 4, 8, then every 16 up to max_num_seqs (at most 512)."""
    top = min(max_num_seqs, 512)
    return sorted({n for n in (1, 2, 4, 8) if n <= top} | set(range(16, top + 1, 16)) | {top})


def graph_bucket(sizes: list[int], n: int) -> int | None:
    """The smallest captured batch size that holds n sequences; None: run eagerly."""
    i = bisect.bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


class CUDAGraphForward(EagerForward):
    """Decode steps replay CUDA graphs captured per batch-size bucket; prefills run eagerly (CUDA)."""

    name = "cudagraph"
    auto_rank = {"cuda": 0}

    @dataclass
    class Config:
        name: str = "cudagraph"

    @classmethod
    def check(cls, target: ForwardTarget) -> None:
        if target.device.type != "cuda":
            raise ConfigError(f"decode CUDA graphs need a CUDA device and this run is on {target.device.type}; "
                              f"use cudagraph=false or auto")
        # nvllm.models.layers.moe.FusedMoE: a graph captures its Triton kernels; its torch code reads
        # each expert's group size on the host, which a graph cannot capture
        why = why_no_compiled_kernels() if target.model.moe_keys is not None else None
        if why:
            raise ConfigError(f"model={target.model.name} is a mixture of experts, whose layer a CUDA graph "
                              f"captures only as its Triton kernels, and {why}; fix that, or use cudagraph=false "
                              f"(forward=auto then runs eager)")

    def __init__(self, config, runner):
        super().__init__(config, runner)
        self.sizes = graph_batch_sizes(runner.config.max_num_seqs)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    @property
    def decode_batch(self) -> int:
        return max(super().decode_batch, self.sizes[-1])

    @torch.inference_mode()
    def bind_kv_cache(self):
        """Capture one decode graph per bucket, largest first, sharing one memory pool."""
        runner, top = self.runner, self.sizes[-1]
        self.table_width = -(-runner.config.max_model_len // runner.block_size)
        input_ids, positions, meta = runner.prepare([], pad_to=top, table_width=self.table_width)
        self.inputs = dict(input_ids=input_ids, positions=positions, slot_mapping=meta.slot_mapping,
                           context_lens=meta.context_lens, block_tables=meta.block_tables)
        self.outputs = torch.empty(top, runner.hf_config.hidden_size, dtype=runner.dtype, device=runner.device)
        pool = None
        for n in reversed(self.sizes):
            graph_meta = self._graph_meta(n)
            self._body(n, graph_meta)  # warm-up outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool):
                self._body(n, graph_meta)
            pool = pool or graph.pool()
            self.graphs[n] = graph
            torch.cuda.synchronize(runner.device)

    def _graph_meta(self, n: int) -> AttentionMetadata:
        g, device = self.inputs, self.runner.device
        return AttentionMetadata(
            cu_seqlens_q=torch.arange(n + 1, dtype=torch.int32, device=device),
            context_lens=g["context_lens"][:n], slot_mapping=g["slot_mapping"][:n],
            block_tables=g["block_tables"][:n], query_lens=[1] * n,
            context_lens_host=[self.table_width * self.runner.block_size] * n, is_decode=True)

    def _body(self, n: int, meta: AttentionMetadata):
        attention = self.runner.attention
        attention.prepare(meta, self.runner.block_size)
        with forward_context(attention, meta):
            self.outputs[:n] = self.model(self.inputs["input_ids"][:n], self.inputs["positions"][:n])

    def __call__(self, input_ids, positions, meta):
        graphed = meta.is_decode and meta.num_layers is None  # the graphs run every layer
        bucket = graph_bucket(sorted(self.graphs), len(meta.query_lens)) if graphed else None
        if bucket is None:  # a prefill, a draft step, a batch past the largest graph, or graphs not captured yet
            return super().__call__(input_ids, positions, meta)
        n, g = len(meta.query_lens), self.inputs
        g["input_ids"][:n], g["positions"][:n] = input_ids, positions
        g["slot_mapping"].fill_(-1)
        g["slot_mapping"][:n] = meta.slot_mapping
        g["context_lens"].fill_(1)
        g["context_lens"][:n] = meta.context_lens
        g["block_tables"].fill_(-1)
        g["block_tables"][:n, :meta.block_tables.shape[1]] = meta.block_tables
        self.graphs[bucket].replay()
        return self.model.compute_logits(self.outputs[:n][logits_rows(meta)])

    def close(self):
        self.graphs.clear()


@hookimpl
def register_forward_strategies(register):
    register(CUDAGraphForward)
