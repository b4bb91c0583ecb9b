"""The executor that computes tensors: it loads the model, sizes and allocates the KV cache, and
runs a StepPlan (nvllm/step.py): packs its sequences into input tensors (positions, slot mapping,
block tables), hands them to the forward strategy (nvllm/forward/: eager, cudagraph, fused_cpu,
...), and samples from the last position of each sequence that samples (every drafted position
too, when the plan carries drafts: nvllm/speculative/verify.py). Under tensor parallelism rank 0
sends each step's inputs to the workers, which run the same forward on their shard; only rank 0
samples.

`execute(plan)` runs a step start to end. Overlap scheduling (async_scheduling) splits it:
`launch` packs and starts the forward pass (an input token that is the step in flight's sample, not
yet on the host, is filled in on the device: nvllm/engine/overlap.py), `sample` draws the tokens
without waiting for the host, `collect` brings them over. CUDA runs asynchronously to the host by
itself; on a CPU the forward pass runs on a worker thread instead."""
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from itertools import accumulate

import numpy as np
import torch

from nvllm import registry
from nvllm.attention.base import AttentionMetadata
from nvllm.config import Config
from nvllm.engine.overlap import InFlight, fill_pending
from nvllm.kv_cache.base import CPU_DEFAULT_BUDGET_GB
from nvllm.distributed import tp_rank
from nvllm.models.layers.moe import FusedMoE, expert_parallel
from nvllm.models.weights import has_weights, load_hf_config, load_weights, random_init
from nvllm.quantization.base import resident_weight_bytes
from nvllm.sampler.logprobs import logprobs_of
from nvllm.sequence import SequenceStatus
from nvllm.speculative.verify import verify
from nvllm.engine.warmup import warm_up
from nvllm.step import Executor, StepPlan, StepResult

NUMPY = {torch.int64: np.int64, torch.int32: np.int32}

# forward strategies under which MoE layers count no tokens per expert (moe.expert_load): cudagraph's
# graphs pad a batch with dummy rows, whose routings a captured count would add
UNCOUNTED = ("cudagraph",)

# one scheduled sequence as the model sees it: (token ids to run, position of the first, block table)
StepInput = tuple[list[int], int, list[int]]


def step_inputs(plan: StepPlan) -> tuple[list[StepInput], list[int] | None]:
    """Exactly the tokens each sequence runs this step (a re-prefilled preempted sequence sends
    all of its tokens, not only the last), then its drafts, if the plan has any; and, for a verify
    step (drafts), how many of each sequence's last rows it scores (its last token and each draft;
    None: the last row of each). Under overlap scheduling a sequence's last token may still be
    coming: its list is then one short (`InFlight` fills it in)."""
    inputs = [(seq.token_ids[seq.num_computed_tokens:seq.num_computed_tokens + n], seq.num_computed_tokens, seq.block_table)
              for seq, n in zip(plan.seqs, plan.num_tokens)]
    if not (plan.drafts and any(plan.drafts)):
        return inputs, None
    return ([(token_ids + drafts, start, table) for (token_ids, start, table), drafts in zip(inputs, plan.drafts)],
            [1 + len(drafts) for drafts in plan.drafts])


def warmup_steps(config: Config, block_size: int, batch: int) -> tuple[list[StepInput], list[StepInput]]:
    """The two steps that sizing measures: the largest prefill, and a decode of the largest batch
    the forward strategy runs (`batch`) with every sequence at max_model_len."""
    seq_len = min(config.max_num_batched_tokens, config.max_model_len)
    num_seqs = max(1, min(config.max_num_batched_tokens // seq_len, config.max_num_seqs))
    prefill = [([0] * seq_len, 0, [0] * -(-seq_len // block_size))] * num_seqs
    table = list(range(-(-config.max_model_len // block_size)))
    return prefill, [([0], config.max_model_len - 1, table)] * batch


class ModelRunner(Executor):
    def __init__(self, config: Config, path: str, control_group=None, eos_token_ids: frozenset[int] = frozenset(),
                 hf_config=None):
        """`eos_token_ids`: the model's end-of-sequence ids (SamplingParams.min_tokens masks them);
        `hf_config`: the checkpoint's transformers config, read once at the edge (else read here:
        a tensor-parallel worker)."""
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype
        self.block_size = config.kv_cache.block_size
        self.control_group = control_group  # set under tp > 1: the gloo group steps are sent on
        self.hf_config = hf_config or load_hf_config(path)
        self.model = self._load_model(path)
        self.attention = registry.build("attention", config.attention, device=self.device, dtype=self.dtype)
        self.sampler = registry.build("sampler", config.sampler, device=self.device, eos_token_ids=eos_token_ids)
        # async_scheduling on a CPU: the forward pass on a worker thread (CUDA runs asynchronously anyway)
        self.worker = None
        if config.async_scheduling and self.device.type == "cpu":
            self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvllm-forward")
        self.forward_strategy = registry.build("forward", config.forward, runner=self)
        self.num_blocks = self._num_blocks(config.kv_cache)
        self._allocate_kv_cache()
        self.forward_strategy.bind_kv_cache()

    def _load_model(self, path: str):
        torch.manual_seed(self.config.seed)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device), expert_parallel(self.config.moe.expert_parallel):
                model = registry.get("model", self.config.model.name)(self.hf_config)
        finally:
            torch.set_default_dtype(default_dtype)
        if has_weights(path):
            load_weights(model, path, self.hf_config)
        else:  # a model.shape: no checkpoint, random weights drawn here
            random_init(model, self.config.seed)
        # the linear layers' weights packed (quantization=int8, int4, gguf), their float copies freed
        registry.build("quantization", self.config.quantization or "none").apply(model, path)
        return model.eval()

    # -- KV cache ------------------------------------------------------------------------
    def _attention_layers(self):
        return [m for m in self.model.modules() if hasattr(m, "k_cache")]

    def block_bytes(self) -> int:
        per_token = sum(2 * m.num_kv_heads * m.head_dim for m in self._attention_layers())
        return per_token * self.block_size * self.attention.cache_dtype.itemsize

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
        num_blocks = min(int(budget) // self.block_bytes(), self.config.max_num_seqs * blocks_per_seq)
        if self.control_group is not None:  # every rank must agree: take the smallest
            agreed = torch.tensor([num_blocks])
            torch.distributed.all_reduce(agreed, torch.distributed.ReduceOp.MIN, group=self.control_group)
            num_blocks = int(agreed)
        if num_blocks < 1:
            raise MemoryError(f"the KV cache budget ({budget / 2**30:.2f} GiB) holds no block of "
                              f"{self.block_bytes() / 2**20:.1f} MiB; raise kv_cache.memory_budget_gb")
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
                m.k_cache = m.v_cache = torch.tensor([], dtype=self.attention.cache_dtype, device=self.device)

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
            m.k_cache = torch.zeros(shape, dtype=self.attention.cache_dtype, device=self.device)
            m.v_cache = torch.zeros(shape, dtype=self.attention.cache_dtype, device=self.device)

    # -- one step ------------------------------------------------------------------------
    def prepare(self, inputs: list[StepInput], num_logits: list[int] | None = None, pad_to: int | None = None,
                table_width: int | None = None, num_layers: int | None = None):
        """Input tensors and attention metadata. `pad_to` adds dummy one-token sequences (slot -1,
        context 1) and `table_width` pads block tables, for fixed CUDA-graph shapes; `num_layers`
        makes it a draft step (the model's first layers only). `num_logits`: how many of each
        input's last rows the step scores (a verify step: its last token and each draft; None: one)."""
        bs = self.block_size
        if num_logits is None and all(len(t[0]) == 1 for t in inputs):  # decode: one token each
            input_ids, positions = [t[0][0] for t in inputs], [t[1] for t in inputs]
            slots = [t[2][start // bs] * bs + start % bs for t, start in zip(inputs, positions)]
            query_lens, context_lens = [1] * len(inputs), [start + 1 for start in positions]
        else:
            input_ids, positions, slots, query_lens, context_lens = [], [], [], [], []
            for token_ids, start, block_table in inputs:
                input_ids += token_ids
                end = start + len(token_ids)
                positions += range(start, end)
                for p in range(start - start % bs, end, bs):  # its slots a block at a time
                    base = block_table[p // bs] * bs
                    slots += range(base + max(start - p, 0), base + min(end - p, bs))
                query_lens.append(end - start)
                context_lens.append(end)
        tables = [block_table for _, _, block_table in inputs]
        if pad_to and pad_to > len(inputs):
            pad = pad_to - len(inputs)
            input_ids += [0] * pad
            positions += [0] * pad
            slots += [-1] * pad
            query_lens += [1] * pad
            context_lens += [1] * pad
            tables += [[]] * pad
        width = table_width or max(map(len, tables))  # tables padded with -1 to one width
        block_tables = self.tensor([t + [-1] * (width - len(t)) for t in tables], torch.int32).view(len(tables), width)
        meta = AttentionMetadata(  # device tensors, host lists, the step's kind
            self.tensor(list(accumulate(query_lens, initial=0)), torch.int32), self.tensor(context_lens, torch.int32),
            self.tensor(slots, torch.int64), block_tables, query_lens, context_lens,
            is_decode=max(query_lens) == 1, num_logits=num_logits, num_layers=num_layers)
        return self.tensor(input_ids, torch.int64), self.tensor(positions, torch.int64), meta

    def tensor(self, data: list, dtype: torch.dtype) -> torch.Tensor:
        """`data` on the device, through numpy (a few times faster than torch.tensor from a list);
        to CUDA from pinned memory, so the copy never waits for the device."""
        host = torch.from_numpy(np.array(data, dtype=NUMPY[dtype]))
        return host if self.device.type == "cpu" else host.pin_memory().to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata):
        """Logits at `logits_rows(meta)`: the last query position of each sequence, every drafted
        one too (None on TP workers)."""
        return self.forward_strategy(input_ids, positions, meta)

    def execute(self, plan: StepPlan) -> StepResult:
        inputs, num_logits = step_inputs(plan)
        logits = self._forward_step(inputs, *self.prepare(inputs, num_logits)).float()
        if num_logits is not None:  # a verify step: each sequence's last token and its drafts are scored
            return verify(self.sampler, logits, plan)
        if plan.is_decode or all(plan.samples):
            return self._sample(logits, plan.seqs)
        # prefill chunks that leave part of the prompt draw nothing
        rows = [i for i, samples in enumerate(plan.samples) if samples]
        drawn = self._sample(logits[self.tensor(rows, torch.int64)], [plan.seqs[i] for i in rows]) if rows else StepResult([])
        return StepResult(*_scatter(len(plan.seqs), rows, drawn.tokens, drawn.logprobs))

    def _sample(self, logits: torch.Tensor, seqs: list) -> StepResult:
        """A token for each row of `logits` (seqs[b]'s), and the logprobs of those that ask."""
        tokens = self.sampler(logits, seqs)
        tokens = tokens if tokens.__class__ is list else tokens.tolist()  # (a tensor, or a list: see Sampler)
        return StepResult(tokens, None if all(seq.logprobs is None for seq in seqs) else logprobs_of(logits, seqs, tokens))

    @torch.inference_mode()
    def _forward_step(self, inputs: list[StepInput], input_ids, positions, meta):
        """`forward`, on every rank: under TP rank 0 first sends the workers the step's inputs."""
        if self.control_group is not None:
            torch.distributed.broadcast_object_list([(inputs, meta.num_logits, meta.num_layers)], src=0,
                                                    group=self.control_group)
        return self.forward_strategy(input_ids, positions, meta)

    def run_inputs(self, inputs: list[StepInput], num_logits: list[int] | None = None, num_layers: int | None = None):
        """One forward pass over `inputs` on every rank, now (under TP rank 0 sends them first): the
        logits of their scored rows (`num_logits` per input, as `prepare` takes it), or of a draft
        step's when `num_layers` is set (a drafter's call)."""
        return self._forward_step(inputs, *self.prepare(inputs, num_logits, num_layers=num_layers))

    # -- overlap scheduling -------------------------------------------------------------------
    def launch(self, plan: StepPlan, held: InFlight | None = None) -> InFlight:
        """Pack `plan`'s inputs and start its forward pass; nothing waits for it. An input token
        still coming (`held`'s sample, not yet on the host) is filled in from its token tensor."""
        inputs, num_logits = step_inputs(plan)
        pending = held.pending(plan, inputs) if held is not None else []
        if pending and (self.control_group is not None or self.device.type == "cpu"):  # fill them in on the host
            values = held.tokens.tolist()  # (the other ranks are sent these token ids)
            for i, row in pending:
                inputs[i][0][-1] = values[row]
            pending = []
        input_ids, positions, meta = self.prepare(inputs, num_logits)
        if pending:
            fill_pending(input_ids, inputs, pending, held.tokens, self.tensor)
        if self.worker is None:
            logits = self._forward_step(inputs, input_ids, positions, meta)
        else:
            logits = self.worker.submit(self._forward_step, inputs, input_ids, positions, meta)
        return InFlight(plan, logits)

    def sample(self, flight: InFlight) -> None:
        """Draw a token for each sequence of the launched step that samples and has not finished
        meanwhile (drawing one for it would still advance a seeded request's noise). On CUDA the
        tokens start for the host; nothing waits for them."""
        logits = flight.logits.result() if isinstance(flight.logits, Future) else flight.logits
        flight.logits, plan, running = None, flight.plan, SequenceStatus.RUNNING
        flight.rows = rows = [i for i, (seq, samples) in enumerate(zip(plan.seqs, plan.samples))
                              if samples and seq.status is running]
        if not rows:
            return
        if len(rows) < len(plan.seqs):
            logits = logits[self.tensor(rows, torch.int64)]
        seqs = [plan.seqs[i] for i in rows]
        tokens = self.sampler(logits.float(), seqs)
        flight.tokens = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(tokens, device=logits.device)
        if any(seq.logprobs is not None for seq in seqs):
            flight.logits = logits  # read for the logprobs once the tokens are on the host
        if self.device.type == "cuda":
            flight.host = torch.empty(flight.tokens.shape, dtype=flight.tokens.dtype, pin_memory=True)
            flight.host.copy_(flight.tokens, non_blocking=True)
            flight.arrived = torch.cuda.Event()
            flight.arrived.record()

    def collect(self, flight: InFlight) -> StepResult:
        """The launched step's result, once its tokens are on the host."""
        if flight.tokens is None:
            return StepResult([None] * len(flight.plan.seqs))
        if flight.arrived is not None:
            flight.arrived.synchronize()
            values = flight.host.tolist()
        else:
            values = flight.tokens.tolist()
        seqs = [flight.plan.seqs[i] for i in flight.rows]
        logprobs = logprobs_of(flight.logits, seqs, values) if flight.logits is not None else None
        return StepResult(*_scatter(len(flight.plan.seqs), flight.rows, values, logprobs))

    def for_draft_model(self, path: str) -> "ModelRunner":
        """A runner for the draft model at `path` (speculative.model): this one's device, dtype and
        limits, tp=1, attention and forward chosen for it by auto, and a cache of as many blocks."""
        from nvllm.config import Config, detect_architecture

        target, hf_config = self.config, load_hf_config(path)
        config = Config(tp=1, compile=target.compile, dtype=target.dtype, device=target.device,
                        max_num_seqs=target.max_num_seqs, max_num_batched_tokens=target.max_num_batched_tokens,
                        max_model_len=target.max_model_len, seed=target.seed,
                        model=registry.make_config("model", {"name": detect_architecture(path), "path": path}),
                        scheduler=target.scheduler, kv_cache=replace(target.kv_cache, num_blocks=self.num_blocks),
                        attention="auto", sampler=target.sampler, forward="auto").resolve(hf_config)
        return ModelRunner(config, path, hf_config=hf_config)

    def warm_up(self) -> None:
        warm_up(self, self.num_blocks, self.block_size, self.config.max_model_len)
        # the router is replicated: rank 0 sees every token
        if self.config.moe.expert_load and tp_rank() == 0 and self.config.forward.name not in UNCOUNTED:
            layers = list(self._moe_layers().values())
            # a strategy that routes without the layers (fused_cpu's C step) counts into its own counters, which
            # the layers then add to as well (a step it leaves to the torch modules)
            counters = self.forward_strategy.count_experts() or [
                torch.zeros(m.num_experts + 1, dtype=torch.int64, device=self.device) for m in layers]
            for layer, counts in zip(layers, counters, strict=True):
                layer.expert_tokens = counts[:layer.num_experts]

    def _moe_layers(self) -> dict[int | str, FusedMoE]:
        """The model's MoE layers by decoder layer index (by module name where it has none)."""
        layers = {}
        for name, m in self.model.named_modules():
            if isinstance(m, FusedMoE):
                index = re.search(r"\.layers\.(\d+)\.", f".{name}.")
                layers[int(index[1]) if index else name] = m
        return layers

    def expert_load(self) -> dict[int | str, list[int]] | None:
        counted = {i: m.expert_tokens.tolist() for i, m in self._moe_layers().items() if m.expert_tokens is not None}
        return counted or None

    def release(self, seq) -> None:
        self.sampler.release(seq)

    def describe(self) -> dict | None:
        return self.forward_strategy.describe()

    def weight_bytes(self) -> int:
        return resident_weight_bytes(self.model)

    def close(self):
        if self.worker is not None:
            self.worker.shutdown(wait=True)  # the step in flight ends before the cache goes
            self.worker = None
        for m in self._attention_layers():
            m.k_cache = m.v_cache = torch.tensor([])
        self.forward_strategy.close()  # graphs, packed copies, its pointers into the cache just freed
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _scatter(size: int, rows: list[int], tokens: list[int], logprobs: list | None) -> tuple[list, list | None]:
    """Per-row tokens (and logprobs) of the sampled `rows` spread over all `size` sequences (None elsewhere)."""
    all_tokens, all_logprobs = [None] * size, None if logprobs is None else [None] * size
    for k, i in enumerate(rows):
        all_tokens[i] = tokens[k]
        if logprobs is not None:
            all_logprobs[i] = logprobs[k]
    return all_tokens, all_logprobs
