"""Loads the model, sizes and allocates the KV cache, and runs one step: packs the scheduled
sequences into input tensors (positions, slot mapping, block tables), hands them to the forward
strategy (nvllm/forward/: eager, cudagraph, fused_cpu, ...), and samples from the last position
of each sequence. Under tensor parallelism rank 0 sends each step's inputs to the workers, which
run the same forward on their shard; only rank 0 samples."""
import torch
from transformers import AutoConfig

from nvllm import registry
from nvllm.attention.base import AttentionMetadata
from nvllm.config import Config
from nvllm.sequence import Sequence
from nvllm.models.weights import load_weights
from nvllm.sampler.logprobs import record_logprobs
from nvllm.speculative.verify import verify

CPU_DEFAULT_BUDGET_GB = 2.0  # the KV cache on a CPU when kv_cache sets no budget: a benchmark-sized batch of a small model

# one scheduled sequence as the model sees it: (token ids to run, position of the first, block
# table[, how many of its last rows the step returns logits for: 1 if left out])
StepInput = tuple[list[int], int, list[int]] | tuple[list[int], int, list[int], int]


def step_inputs(seqs: list[Sequence]) -> list[StepInput]:
    """Exactly the tokens each sequence runs this step (a re-prefilled preempted sequence sends
    all of its tokens, not only the last), then its drafted tokens, each of which is scored."""
    return [(seq.token_ids[seq.num_computed_tokens:seq.num_computed_tokens + seq.num_scheduled_tokens]
             + seq.draft_token_ids, seq.num_computed_tokens, seq.block_table, 1 + len(seq.draft_token_ids))
            for seq in seqs]


def warmup_steps(config: Config, block_size: int, batch: int) -> tuple[list[StepInput], list[StepInput]]:
    """The two steps that sizing measures: the largest prefill, and a decode of the largest batch
    the forward strategy runs (`batch`) with every sequence at max_model_len."""
    seq_len = min(config.max_num_batched_tokens, config.max_model_len)
    num_seqs = max(1, min(config.max_num_batched_tokens // seq_len, config.max_num_seqs))
    prefill = [([0] * seq_len, 0, [0] * -(-seq_len // block_size))] * num_seqs
    table = list(range(-(-config.max_model_len // block_size)))
    return prefill, [([0], config.max_model_len - 1, table)] * batch


class ModelRunner:
    def __init__(self, config: Config, path: str, control_group=None):
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = config.kv_cache.block_size
        self.control_group = control_group  # set under tp > 1: the gloo group steps are sent on
        self.hf_config = AutoConfig.from_pretrained(path)
        torch.manual_seed(config.seed)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = registry.get("model", config.model.name)(self.hf_config)
        finally:
            torch.set_default_dtype(default_dtype)
        load_weights(self.model, path)
        self.model.eval()
        self.attention = registry.build("attention", config.attention, device=self.device, dtype=self.dtype)
        self.sampler = registry.build("sampler", config.sampler, device=self.device)
        self.forward_strategy = registry.build("forward", config.forward, runner=self)
        self.num_blocks = self._num_blocks(config.kv_cache)
        self._allocate_kv_cache()
        self.forward_strategy.bind_kv_cache()

    # -- KV cache ------------------------------------------------------------------------
    def _attention_layers(self):
        return [m for m in self.model.modules() if hasattr(m, "k_cache")]

    def _block_bytes(self) -> int:
        per_token = sum(2 * m.num_kv_heads * m.head_dim for m in self._attention_layers())
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
        if self.control_group is not None:  # every rank must agree: take the smallest
            agreed = torch.tensor([num_blocks])
            torch.distributed.all_reduce(agreed, torch.distributed.ReduceOp.MIN, group=self.control_group)
            num_blocks = int(agreed)
        if num_blocks < 1:
            raise MemoryError(f"the KV cache budget ({budget / 2**30:.2f} GiB) holds no block of "
                              f"{self._block_bytes() / 2**20:.1f} MiB; raise kv_cache.memory_budget_gb")
        return num_blocks

    def _peak_forward_bytes(self, measure=None) -> int:
        """Activation memory the KV cache must leave room for: the larger of the largest prefill
        and decode at the forward strategy's largest batch (cudagraph: its top bucket) with every
        sequence at max_model_len, measured by warm-up passes (sdpa's decode copy grows with both)."""
        measure = measure or self._cuda_peak_bytes
        prefill, decode = warmup_steps(self.config, self.block_size, self.forward_strategy.decode_batch)
        peak = measure(lambda: self.forward(*self.prepare(prefill)))  # no cache yet: nothing cached is read
        self._allocate_kv_cache(num_blocks=len(decode[0][2]))  # decode reads a cache: a stand-in, every row shares it
        try:
            return max(peak, measure(lambda: self.forward(*self.prepare(decode))))
        finally:
            for m in self._attention_layers():
                m.k_cache = m.v_cache = torch.tensor([], dtype=self.dtype, device=self.device)

    def _cuda_peak_bytes(self, fn) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        fn()
        peak = torch.cuda.max_memory_allocated(self.device) - before
        torch.cuda.empty_cache()
        return peak

    def _allocate_kv_cache(self, num_blocks: int | None = None):
        # one block more than the allocator hands out: padding slots (-1) land in its last slot
        for m in self._attention_layers():
            shape = ((num_blocks or self.num_blocks) + 1, self.block_size, m.num_kv_heads, m.head_dim)
            m.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            m.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    # -- one step ------------------------------------------------------------------------
    def prepare(self, inputs: list[StepInput], pad_to: int | None = None, table_width: int | None = None,
                num_layers: int | None = None):
        """Input tensors and attention metadata. `pad_to` adds dummy one-token sequences (slot -1,
        context 1) and `table_width` pads block tables, for fixed CUDA-graph shapes; `num_layers`
        makes it a draft step (the model's first layers only)."""
        input_ids, positions, slots, query_lens, context_lens, num_logits = [], [], [], [], [], []
        bs = self.block_size
        for token_ids, start, block_table, *rows in inputs:
            end = start + len(token_ids)
            input_ids.extend(token_ids)
            positions.extend(range(start, end))
            slots.extend(block_table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(end - start)
            context_lens.append(end)
            num_logits.append(rows[0] if rows else 1)
        tables = [block_table for _, _, block_table, *_ in inputs]
        for _ in range(len(inputs), pad_to or 0):
            input_ids.append(0), positions.append(0), slots.append(-1), query_lens.append(1), context_lens.append(1)
            tables.append([])
        width = table_width or max(len(t) for t in tables)
        block_tables = [t + [-1] * (width - len(t)) for t in tables]
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
            num_logits=num_logits if any(n > 1 for n in num_logits) else None,
            num_layers=num_layers,
        )
        return tensor(input_ids, torch.int64), tensor(positions, torch.int64), meta

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata):
        """Logits at `logits_rows(meta)`: the last query position of each sequence, every drafted
        one too (None on TP workers)."""
        return self.forward_strategy(input_ids, positions, meta)

    def execute(self, inputs: list[StepInput], num_layers: int | None = None):
        """One forward pass over `inputs` on every rank (under TP rank 0 sends them first): the
        logits of their scored rows, or of a draft step's when `num_layers` is set."""
        if self.control_group is not None:
            torch.distributed.broadcast_object_list([(inputs, num_layers)], src=0, group=self.control_group)
        return self.forward(*self.prepare(inputs, num_layers=num_layers))

    def run(self, seqs: list[Sequence]) -> list[int] | list[list[int]]:
        """A token for each sequence (-1 for a prefill chunk), or, when some carry drafted tokens,
        each one's run: its accepted drafts and one token of the model's own (nvllm/speculative/verify.py)."""
        logits = self.execute(step_inputs(seqs))
        if any(seq.draft_token_ids for seq in seqs):
            return verify(self.sampler, logits.float(), seqs)
        # only a sequence whose tokens are all computed after this step keeps its sample; a prefill
        # chunk's would be thrown away, and drawing it would still advance a seeded request's noise
        done = [i for i, seq in enumerate(seqs) if seq.num_computed_tokens + seq.num_scheduled_tokens >= len(seq)]
        if len(done) == len(seqs):
            token_ids = self.sampler(logits.float(), seqs)
        else:
            token_ids = [-1] * len(seqs)  # postprocess skips the unfinished prefills' entries
            if done:
                sampled = self.sampler(logits[done].float(), [seqs[i] for i in done])
                for i, token_id in zip(done, sampled):
                    token_ids[i] = token_id
        if any(seqs[i].logprobs is not None for i in done):
            record_logprobs(logits, seqs, done, token_ids)
        return token_ids

    def close(self):
        for m in self._attention_layers():
            m.k_cache = m.v_cache = torch.tensor([])
        self.forward_strategy.close()  # graphs, packed copies, its pointers into the cache just freed
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
