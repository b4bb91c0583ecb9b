"""Loads the model, sizes and allocates the KV cache, and runs one step: packs the scheduled
sequences into input tensors (positions, slot mapping, block tables), hands them to the forward
strategy (nvllm/forward/: eager, cudagraph, fused_cpu, ...), and samples from the last position
of each sequence. Under tensor parallelism rank 0 sends each step's inputs to the workers, which
run the same forward on their shard; only rank 0 samples. A strategy that computes no tensors
(forward=simulated) gets no model, no cache tensors and no packed inputs: it sizes the cache and
gives each step's token ids itself.

A step is launched, sampled and collected (`run` does all three). With async_scheduling the
engine launches the next step before collecting this one: an input token that is still PENDING
(this step's sample) is filled in on the device from this step's token tensor, so the host never
waits for the device while it schedules and packs. CUDA runs asynchronously to the host by
itself; on a CPU the forward pass runs on a worker thread instead."""
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate

import numpy as np
import torch
from transformers import AutoConfig

from nvllm import registry
from nvllm.attention.base import AttentionMetadata
from nvllm.config import Config
from nvllm.engine.overlap import Step, fill_pending, pending_inputs
from nvllm.forward.base import computes_tensors
from nvllm.models.weights import has_weights, load_weights, random_init
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.sampler.logprobs import record_logprobs
from nvllm.speculative.verify import verify

NUMPY = {torch.int64: np.int64, torch.int32: np.int32}
CPU_DEFAULT_BUDGET_GB = 2.0  # the KV cache on a CPU when kv_cache sets no budget: a benchmark-sized batch of a small model

# one scheduled sequence as the model sees it: (token ids to run, position of the first, block
# table[, how many of its last rows the step returns logits for]); a step's inputs all have the
# fourth entry (a speculative verify step) or none do (one row each)
StepInput = tuple[list[int], int, list[int]] | tuple[list[int], int, list[int], int]


def step_inputs(seqs: list[Sequence], drafts: bool = False) -> list[StepInput]:
    """Exactly the tokens each sequence runs this step (a re-prefilled preempted sequence sends
    all of its tokens, not only the last), then, if `drafts` (a drafter is on), its drafted tokens,
    each of which is scored."""
    inputs = [(seq.token_ids[seq.num_computed_tokens:seq.num_computed_tokens + seq.num_scheduled_tokens],
               seq.num_computed_tokens, seq.block_table) for seq in seqs]
    if drafts and any(seq.draft_token_ids for seq in seqs):
        inputs = [(token_ids + seq.draft_token_ids, start, table, 1 + len(seq.draft_token_ids))
                  for (token_ids, start, table), seq in zip(inputs, seqs)]
    return inputs


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
        self.model = self.attention = None
        if computes_tensors(config.forward):
            self.model = self._load_model(path)
            self.attention = registry.build("attention", config.attention, device=self.device, dtype=self.dtype)
        self.sampler = registry.build("sampler", config.sampler, device=self.device)
        self.sampler.device_tokens = bool(config.async_scheduling)  # a tensor of tokens, no host sync
        # async_scheduling on a CPU: the forward pass on a worker thread (CUDA runs asynchronously anyway)
        self.worker = None
        if config.async_scheduling and self.device.type == "cpu":
            self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvllm-forward")
        self.forward_strategy = registry.build("forward", config.forward, runner=self)
        self.speculating = getattr(config.speculative, "name", "none") != "none"  # steps may carry drafts
        if self.model is None:  # forward=simulated: the cache it stands in for has no tensors
            self.num_blocks = self.forward_strategy.kv_cache_blocks(config.kv_cache)
        else:
            self.num_blocks = self._num_blocks(config.kv_cache)
            self._allocate_kv_cache()
        self.forward_strategy.bind_kv_cache()

    def _load_model(self, path: str):
        torch.manual_seed(self.config.seed)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = registry.get("model", self.config.model.name)(self.hf_config)
        finally:
            torch.set_default_dtype(default_dtype)
        if has_weights(path):
            load_weights(model, path)
        else:  # a model.shape: no checkpoint, random weights drawn here
            random_init(model, self.config.seed)
        return model.eval()

    # -- KV cache ------------------------------------------------------------------------
    def _attention_layers(self):
        return [m for m in self.model.modules() if hasattr(m, "k_cache")]

    def _block_bytes(self) -> int:
        if self.model is None:  # forward=simulated: the block of the cache it stands in for
            return self.forward_strategy.block_bytes()
        per_token = sum(2 * m.num_kv_heads * m.head_dim for m in self._attention_layers())
        return per_token * self.block_size * self.dtype.itemsize

    def _num_blocks(self, kv_config) -> int:
        if kv_config.num_blocks:
            return kv_config.num_blocks
        if kv_config.memory_budget_gb is not None:
            budget = kv_config.memory_budget_gb * 2**30
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            used = total - free  # the weights just loaded, this process's CUDA context, other processes
            budget = total * kv_config.gpu_memory_utilization - used - self._peak_forward_bytes()
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
        makes it a draft step (the model's first layers only). An input's fourth entry, when there,
        is how many of its last rows the step scores (a verify step: its last token and each draft)."""
        bs = self.block_size
        scored = len(inputs[0]) > 3  # a verify step: some sequences score several rows
        if not scored and all(len(t[0]) == 1 for t in inputs):  # decode: one token each
            input_ids = [t[0][0] for t in inputs]
            positions = [t[1] for t in inputs]
            slots = [t[2][start // bs] * bs + start % bs for t, start in zip(inputs, positions)]
            query_lens = [1] * len(inputs)
            context_lens = [start + 1 for start in positions]
        else:
            input_ids, positions, slots, query_lens, context_lens = [], [], [], [], []
            for token_ids, start, block_table, *_ in inputs:
                input_ids += token_ids
                end = start + len(token_ids)
                positions += range(start, end)
                for p in range(start - start % bs, end, bs):  # its slots a block at a time
                    base = block_table[p // bs] * bs
                    slots += range(base + max(start - p, 0), base + min(end - p, bs))
                query_lens.append(end - start)
                context_lens.append(end)
        tables = [block_table for _, _, block_table, *_ in inputs]
        pad = (pad_to or 0) - len(inputs)
        if pad > 0:
            input_ids += [0] * pad
            positions += [0] * pad
            slots += [-1] * pad
            query_lens += [1] * pad
            context_lens += [1] * pad
            tables += [[]] * pad
        width = table_width or max(map(len, tables))
        filler = [-1] * width
        flat_tables = []
        for t in tables:
            flat_tables += t
            if len(t) < width:
                flat_tables += filler[len(t):]
        meta = AttentionMetadata(
            cu_seqlens_q=self.tensor(list(accumulate(query_lens, initial=0)), torch.int32),
            context_lens=self.tensor(context_lens, torch.int32),
            slot_mapping=self.tensor(slots, torch.int64),
            block_tables=self.tensor(flat_tables, torch.int32).view(len(tables), width),
            query_lens=query_lens,
            context_lens_host=context_lens,
            is_decode=max(query_lens) == 1,
            num_logits=[t[3] for t in inputs] if scored else None,
            num_layers=num_layers,
        )
        return self.tensor(input_ids, torch.int64), self.tensor(positions, torch.int64), meta

    def tensor(self, data: list, dtype: torch.dtype) -> torch.Tensor:
        """`data` on the device, through numpy (a few times faster than torch.tensor from a list);
        to CUDA from pinned memory, so the copy never waits for the device."""
        host = torch.from_numpy(np.array(data, dtype=NUMPY[dtype]))
        if self.device.type == "cpu":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata):
        """Logits at `logits_rows(meta)`: the last query position of each sequence, every drafted
        one too (None on TP workers)."""
        return self.forward_strategy(input_ids, positions, meta)

    def run(self, seqs: list[Sequence]) -> list[int] | list[int | list[int]]:
        """One step start to end: each sequence's sampled token (-1 where it sampled none), or its
        run when the step verifies drafts (nvllm/speculative/verify.py)."""
        step = self.launch(seqs)
        self.sample(step)
        return self.collect(step)

    def launch(self, seqs: list[Sequence], in_flight: Step | None = None) -> Step:
        """Pack `seqs`' inputs and start their forward pass; nothing waits for it. A PENDING input
        token, a sample of `in_flight` not yet on the host, is filled in from its token tensor.
        forward=simulated (no model) gives the step's tokens here: no tensors, no sampling."""
        inputs = step_inputs(seqs, self.speculating)
        num_tokens = sum(len(t[0]) for t in inputs)
        verify = len(inputs[0]) > 3
        # a decode step: each sequence runs its last token (and its drafts, if any)
        if verify:
            is_decode = all(s.num_scheduled_tokens == 1 and s.num_computed_tokens >= s.num_prompt_tokens for s in seqs)
        else:
            is_decode = num_tokens == len(seqs) and all(s.num_computed_tokens >= s.num_prompt_tokens for s in seqs)
        if self.model is None:
            return Step(seqs, num_tokens, is_decode, tokens=self.forward_strategy.next_tokens(seqs))
        pending = pending_inputs(seqs, inputs, in_flight) if in_flight is not None else []
        tokens = in_flight.tokens if pending else None
        if pending and (self.control_group is not None or isinstance(tokens, list)):  # fill them in on the host
            values = tokens if isinstance(tokens, list) else tokens.tolist()  # (CUDA: waits for in_flight's sample)
            for i, row in pending:
                inputs[i][0][-1] = values[row]  # the other ranks are sent these token ids
            pending = []
        input_ids, positions, meta = self.prepare(inputs)
        if pending:
            fill_pending(input_ids, inputs, pending, tokens, self.tensor)
        if self.worker is None:
            logits = self._forward_step(inputs, input_ids, positions, meta)
        else:
            logits = self.worker.submit(self._forward_step, inputs, input_ids, positions, meta)
        return Step(seqs, num_tokens, is_decode, logits, verify=verify)

    def _forward_step(self, inputs: list[StepInput], input_ids, positions, meta):
        if self.control_group is not None:
            torch.distributed.broadcast_object_list([(inputs, meta.num_layers)], src=0, group=self.control_group)
        return self.forward(input_ids, positions, meta)

    def execute(self, inputs: list[StepInput], num_layers: int | None = None):
        """One forward pass over `inputs` on every rank, now (under TP rank 0 sends them first): the
        logits of their scored rows, or of a draft step's when `num_layers` is set (a drafter's call)."""
        return self._forward_step(inputs, *self.prepare(inputs, num_layers=num_layers))

    def sample(self, step: Step) -> None:
        """Draw a token for each sequence of `step` whose prompt is complete after it and that has
        not finished meanwhile (a prefill chunk's sample would be thrown away, and drawing it would
        still advance a seeded request's noise). On CUDA the tokens start for the host; nothing
        waits for them."""
        if self.model is None:
            return  # forward=simulated: launch gave the tokens
        logits = step.logits.result() if isinstance(step.logits, Future) else step.logits
        step.logits = None
        seqs = step.seqs
        running = SequenceStatus.RUNNING
        rows = [i for i, seq in enumerate(seqs)
                if seq.num_computed_tokens + seq.num_scheduled_tokens >= seq.num_tokens and seq.status is running]
        if not rows:
            return
        if step.verify:  # speculative decoding (no overlap): verify the drafts
            step.tokens = verify(self.sampler, logits.float(), seqs)  # each one's run (-1: a prefill chunk)
            return
        if len(rows) < len(seqs):
            step.rows, logits, seqs = rows, logits[self.tensor(rows, torch.int64)], [seqs[i] for i in rows]
        step.tokens = tokens = self.sampler(logits.float(), seqs)  # a list, or a tensor (device_tokens)
        if any(seq.logprobs is not None for seq in seqs):
            step.logits = logits  # read for the logprobs once the tokens are on the host
        if isinstance(tokens, torch.Tensor) and self.device.type == "cuda" and self.config.async_scheduling:
            step.host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            step.host.copy_(tokens, non_blocking=True)
            step.arrived = torch.cuda.Event()
            step.arrived.record()

    def collect(self, step: Step) -> list[int] | list[int | list[int]]:
        """The sampled token of each sequence of `step` (-1 where it sampled none), once on the host;
        after a verify step, each one's run: its accepted drafts and one token of the model's own."""
        if step.tokens is None:
            return [-1] * len(step.seqs)
        if step.arrived is not None:
            step.arrived.synchronize()
            values = step.host.tolist()
        else:
            values = step.tokens if isinstance(step.tokens, list) else step.tokens.tolist()
        if step.logits is not None:
            sampled = step.seqs if step.rows is None else [step.seqs[i] for i in step.rows]
            record_logprobs(step.logits, sampled, range(len(sampled)), values)
            step.logits = None
        if step.rows is None:
            return values
        token_ids = [-1] * len(step.seqs)
        for i, token_id in zip(step.rows, values):
            token_ids[i] = token_id
        return token_ids

    def close(self):
        if self.worker is not None:
            self.worker.shutdown(wait=True)  # the step in flight ends before the cache goes
            self.worker = None
        for m in self._attention_layers() if self.model is not None else ():
            m.k_cache = m.v_cache = torch.tensor([])
        self.forward_strategy.close()  # graphs, packed copies, its pointers into the cache just freed
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
