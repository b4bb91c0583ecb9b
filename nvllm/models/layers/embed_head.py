"""Vocab-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary. A
packed format holds the table as int8 rows (`PackedWeight`; tied, the head shares the embedding's
tensors): the embedding dequantizes the rows it looks up, the head multiplies as a linear layer does."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nvllm.distributed import all_reduce, tp_rank, tp_size
from nvllm.models.layers.linear import PackedWeight, pack
from nvllm.models.layers.packed import dequantize


class VocabParallelEmbedding(PackedWeight):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.vocab_size = vocab_size
        self.shard = (vocab_size + self.tp_size - 1) // self.tp_size
        self.start = self.tp_rank * self.shard
        self.end = min(self.start + self.shard, vocab_size)
        self.weight = nn.Parameter(torch.zeros(self.shard, hidden_size))
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor):
        part = loaded[self.start:self.end]
        param.data[: part.shape[0]].copy_(part)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The table's rows `ids` (of this rank's shard)."""
        if self.held is not None:
            return self.held.rows_of(ids)
        if self.qweight is None:
            return F.embedding(ids, self.weight)
        flat = ids.reshape(-1)
        rows = dequantize(self.qweight[flat], self.scales[flat], None if self.mins is None else self.mins[flat],
                          self.weight_dtype)
        return rows.view(*ids.shape, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.rows(x)
        inside = (x >= self.start) & (x < self.end)
        y = self.rows((x - self.start) * inside) * inside.unsqueeze(-1)
        return all_reduce(y)


class ParallelLMHead(VocabParallelEmbedding):
    def pack_weights(self):
        self.packed = pack(self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Full logits on rank 0 (gathered), None elsewhere."""
        logits = self.matmul(hidden, None)
        if self.tp_size == 1:
            return logits[:, : self.vocab_size]
        parts = [torch.empty_like(logits) for _ in range(self.tp_size)] if self.tp_rank == 0 else None
        dist.gather(logits, parts, 0)
        return torch.cat(parts, -1)[:, : self.vocab_size] if self.tp_rank == 0 else None
