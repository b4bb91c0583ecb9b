"""Loads the model, sizes and allocates the KV cache, and runs one step: packs the scheduled
sequences into input tensors (positions, slot mapping, block tables), runs the forward pass with
the attention backend, and samples from the last position of each sequence."""
import torch
from transformers import AutoConfig

from nvllm import registry
from nvllm.attention.base import AttentionMetadata, forward_context
from nvllm.config import EngineConfig
from nvllm.engine.sequence import Sequence
from nvllm.models.weights import load_weights

CPU_DEFAULT_BUDGET_GB = 1.0


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config, path: str, kv_config, attention_config, sampler_config):
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = kv_config.block_size
        self.hf_config = AutoConfig.from_pretrained(path)
        torch.manual_seed(config.seed)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = registry.get("model", model_config.name)(self.hf_config)
        finally:
            torch.set_default_dtype(default_dtype)
        load_weights(self.model, path)
        self.model.eval()
        self.attention = registry.build("attention", attention_config, device=self.device, dtype=self.dtype)
        self.sampler = registry.build("sampler", sampler_config, device=self.device)
        self.num_blocks = self._num_blocks(kv_config)
        self._allocate_kv_cache()

    def _block_bytes(self) -> int:
        attn = [m for m in self.model.modules() if hasattr(m, "k_cache")]
        per_token = sum(2 * m.num_kv_heads * m.head_dim for m in attn)
        return per_token * self.block_size * self.dtype.itemsize

    def _num_blocks(self, kv_config) -> int:
        if kv_config.num_blocks:
            return kv_config.num_blocks
        if kv_config.memory_budget_gb is not None:
            budget = kv_config.memory_budget_gb * 2**30
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used_by_others = total - free - torch.cuda.memory_allocated(self.device)
            budget = total * kv_config.gpu_memory_utilization - used_by_others - self._peak_forward_bytes()
        else:
            budget = CPU_DEFAULT_BUDGET_GB * 2**30
        # never more than max_num_seqs full-length sequences could use
        blocks_per_seq = -(-self.config.max_model_len // self.block_size)
        num_blocks = min(int(budget) // self._block_bytes(), self.config.max_num_seqs * blocks_per_seq)
        if num_blocks < 1:
            raise MemoryError(f"the KV cache budget ({budget / 2**30:.2f} GiB) holds no block of "
                              f"{self._block_bytes() / 2**20:.1f} MiB; raise kv_cache.memory_budget_gb")
        return num_blocks

    def _peak_forward_bytes(self) -> int:
        """Activation memory of the largest prefill, measured by a warm-up pass without a cache."""
        seq_len = min(self.config.max_num_batched_tokens, self.config.max_model_len)
        num_seqs = max(1, min(self.config.max_num_batched_tokens // seq_len, self.config.max_num_seqs))
        lens = [seq_len] * num_seqs
        meta = AttentionMetadata(
            cu_seqlens_q=torch.arange(0, num_seqs + 1, device=self.device, dtype=torch.int32) * seq_len,
            context_lens=torch.full((num_seqs,), seq_len, device=self.device, dtype=torch.int32),
            slot_mapping=torch.zeros(seq_len * num_seqs, device=self.device, dtype=torch.int64),
            block_tables=torch.zeros((num_seqs, -(-seq_len // self.block_size)), device=self.device, dtype=torch.int32),
            query_lens=lens, context_lens_host=lens, is_decode=False,
        )
        input_ids = torch.zeros(seq_len * num_seqs, dtype=torch.int64, device=self.device)
        positions = torch.arange(seq_len, device=self.device).repeat(num_seqs)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.forward(input_ids, positions, meta)
        peak = torch.cuda.max_memory_allocated(self.device) - before
        torch.cuda.empty_cache()
        return peak

    def _allocate_kv_cache(self):
        attn = [m for m in self.model.modules() if hasattr(m, "k_cache")]
        for m in attn:
            shape = (self.num_blocks, self.block_size, m.num_kv_heads, m.head_dim)
            m.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            m.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def prepare(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        input_ids, positions, slots, query_lens, context_lens = [], [], [], [], []
        bs = self.block_size
        for seq in seqs:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + seq.num_scheduled_tokens
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(seq.block_table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(end - start)
            context_lens.append(end)
        max_blocks = max(len(seq.block_table) for seq in seqs)
        block_tables = [seq.block_table + [-1] * (max_blocks - len(seq.block_table)) for seq in seqs]
        cu_seqlens_q = [0]
        for n in query_lens:
            cu_seqlens_q.append(cu_seqlens_q[-1] + n)

        def tensor(data, dtype):
            return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)

        meta = AttentionMetadata(
            cu_seqlens_q=tensor(cu_seqlens_q, torch.int32),
            context_lens=tensor(context_lens, torch.int32),
            slot_mapping=tensor(slots, torch.int64),
            block_tables=tensor(block_tables, torch.int32),
            query_lens=query_lens,
            context_lens_host=context_lens,
            is_decode=max(query_lens) == 1,
        )
        return tensor(input_ids, torch.int64), tensor(positions, torch.int64), meta

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Logits at the last query position of each sequence."""
        self.attention.prepare(meta, self.block_size)
        with forward_context(self.attention, meta):
            hidden = self.model(input_ids, positions)
        return self.model.compute_logits(hidden[meta.cu_seqlens_q[1:].long() - 1])

    def run(self, seqs: list[Sequence]) -> list[int]:
        logits = self.forward(*self.prepare(seqs))
        return self.sampler(logits.float(), seqs)

    def close(self):
        for m in self.model.modules():
            if hasattr(m, "k_cache"):
                m.k_cache = m.v_cache = torch.tensor([])
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
