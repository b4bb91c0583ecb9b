"""The engine loop: add requests, abort them, and step — schedule, run the model, postprocess —
until every request has finished. Intake checks live in intake.py, deltas and outputs in
outputs.py, the offline `generate` driver in driver.py. Components come from the registry; none of
this code sees a DictConfig or a plugin."""
import logging
import time

from transformers import AutoConfig

from nvllm import registry
from nvllm.config import Config
from nvllm.distributed.workers import Workers
from nvllm.engine import driver, intake
from nvllm.engine.clock import Clock
from nvllm.engine.detokenizer import Detokenizer
from nvllm.engine.model_runner import ModelRunner
from nvllm.engine.outputs import LiveRequest, RequestDelta, RequestOutput, SpecDecodingStats, StepStats
from nvllm.engine.warmup import warm_up
from nvllm.models.weights import is_random, resolve_model_path
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: Config):
        """`config`: the typed configuration (`Config.from_cfg` of a composed Hydra config)."""
        self.failure = None  # set when a fault stopped the engine
        self.clock = Clock()  # every timestamp below reads it (nvllm/engine/clock.py)
        started = time.perf_counter()
        # -- the model: weights, config resolved against it, tokenizer
        self.model_path = resolve_model_path(config.model)
        self.random_weights = is_random(self.model_path)
        hf_config = AutoConfig.from_pretrained(self.model_path)
        self.config = config = config.resolve(hf_config)
        self.tokenizer = intake.load_tokenizer(self.model_path)
        # -- the model runner on rank 0, and under TP the other ranks' workers
        runner_args = (config, self.model_path)
        self.workers = Workers(config.tp, ModelRunner, runner_args) if config.tp > 1 else None
        try:
            self.model_runner = ModelRunner(*runner_args, control_group=self.workers and self.workers.group)
        except BaseException as e:  # Ctrl-C included: the workers must not outlive it
            self._fail(e)
        # -- the KV cache and the scheduler that allocates from it
        self.kv_cache = registry.build("kv_cache", config.kv_cache, num_blocks=self.model_runner.num_blocks,
                                       block_size=config.kv_cache.block_size)
        self.scheduler = registry.build(
            "scheduler", config.scheduler, kv_cache=self.kv_cache, max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens, max_model_len=config.max_model_len,
            eos_token_ids=_eos_ids(self.tokenizer, hf_config))
        # -- speculative decoding: the drafter, which says each step how many slots the scheduler reserves for it
        self.drafter = registry.build("speculative", config.speculative, runner=self.model_runner)
        num_drafted = self.drafter.num_speculative_tokens
        self.model_runner.sampler.eos_token_ids = self.scheduler.eos_token_ids  # min_tokens masks them
        # -- warm-up (torch.compile compiles here), timed apart from every request
        loaded = time.perf_counter()
        if config.compile:
            logger.info("compiling the model with torch.compile (compile=true): the first time takes a minute "
                        "or more, later runs read the compile cache")
        try:
            warm_up(self.model_runner, self.kv_cache.num_blocks, self.kv_cache.block_size, config.max_model_len)
        except BaseException as e:
            self._fail(e)
        self.startup_s = {"load": loaded - started, "warmup": time.perf_counter() - loaded}
        logger.info(startup_line(self))
        # -- requests: live ones by id, those not yet due, the last deltas of aborted ones
        self.stats = StepStats(spec_decode=SpecDecodingStats(num_drafted) if num_drafted else None)
        self._requests: dict[str, dict[int, LiveRequest]] = {}  # id -> its live completions by index
        self._held: dict[int, list[Sequence]] = {}  # a first completion's seq id -> its siblings, not yet added
        self._arrivals = intake.Arrivals(self.clock)
        self._aborted: list[RequestDelta] = []  # the next step returns them

    # -- add / abort ------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        return intake.encode(prompt, self.tokenizer, self.model_path)

    def add_request(self, request_id: str, prompt: str | list[int], sampling_params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0, stream: bool = True) -> Sequence:
        """Validate and queue one request; a bad one raises ValueError and changes nothing.
        `arrival_time` (on `self.clock`; default now) may be in the future: the request is held
        until then, and its TTFT counts from then. `stream=False` decodes its text once at the end
        (its deltas carry the tokens; the last one the whole text). With `sampling_params.n > 1` its
        other completions wait until the first has computed the prompt, then find its full blocks in
        the prefix cache. Returns the request's (first) Sequence."""
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running; ids must be unique among live requests")
        if getattr(self, "model_runner", None) is None:
            raise RuntimeError("the engine is closed: create a new LLM to generate again")
        if self.failure is not None:
            raise RuntimeError(f"the engine stopped after a failure ({self.failure}); create a new LLM")
        now = self.clock.now()
        seq = intake.new_sequence(
            request_id, prompt, sampling_params, priority, now if arrival_time is None else arrival_time,
            tokenizer=self.tokenizer,
            model_path=self.model_path, vocab_size=self.model_runner.hf_config.vocab_size,
            max_model_len=self.config.max_model_len, kv_cache=self.kv_cache)
        others = intake.siblings(seq)
        self._requests[request_id] = {s.index: LiveRequest(s, Detokenizer(self.tokenizer, sampling_params.stop, stream))
                                      for s in (seq, *others)}
        if others and getattr(self.config.kv_cache, "prefix_caching", False):
            self._held[seq.seq_id], others = others, []  # added once `seq` has computed the prompt
        for s in (seq, *others):
            if s.arrival_time > now:
                self._arrivals.add(s)  # held until it is due
            else:
                self.scheduler.add(s)
        return seq

    def abort_request(self, request_id: str) -> None:
        """Finish a live request (every completion) with finish_reason "abort" and free its blocks
        now; its last deltas come with the next step. An unknown or finished id is ignored."""
        completions = self._requests.get(request_id)
        if completions is None:
            return
        now = self.clock.now()
        held = self._held.pop(completions[0].seq.seq_id, []) if 0 in completions else []
        for request in list(completions.values()):
            seq = request.seq
            if any(s is seq for s in held) or self._arrivals.remove(seq):
                seq.status = SequenceStatus.FINISHED  # never reached the scheduler
            else:
                self.scheduler.finish(seq, "abort")
            seq.finish_reason = "abort"
            self._aborted.append(self._delta(request, now))

    def abort_requests(self, request_ids, quiet: bool = False) -> None:
        """abort_request for each id; `quiet`: no deltas for them (a reader that went away)."""
        for request_id in request_ids:
            self.abort_request(request_id)
        if quiet:
            ids = set(request_ids)
            self._aborted = [d for d in self._aborted if d.request_id not in ids]

    def sequences(self, request_id: str) -> list[Sequence]:
        """A live request's completions (SamplingParams.n of them, finished ones left out), by index."""
        return [live.seq for _, live in sorted(self._requests.get(request_id, {}).items())]

    def has_unfinished_requests(self) -> bool:
        """Whether any request is waiting, running, not yet arrived, or has a delta to come."""
        return bool(self._requests or self._aborted)

    def is_finished(self) -> bool:
        return not self.has_unfinished_requests()

    # -- step -------------------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """One scheduling step; sleeps until the next arrival when nothing is due. Returns a delta
        for each request that advanced or finished."""
        deltas, self._aborted = self._aborted, []
        for seq in self._arrivals.due(wait=not deltas and self.scheduler.is_finished()):
            self.scheduler.add(seq)
        if self.scheduler.is_finished():
            return deltas
        self.scheduler.num_lookahead_tokens = self.drafter.lookahead(len(self.scheduler.running))
        seqs = self.scheduler.schedule()
        if not seqs:
            raise RuntimeError("the scheduler picked nothing while requests are pending")
        start = self.clock.now()
        try:
            self.drafter.draft(seqs)  # speculative decoding's drafts (none when speculative=none)
            num_tokens = sum(seq.num_scheduled_tokens + len(seq.draft_token_ids) for seq in seqs)
            is_decode = all(s.num_scheduled_tokens == 1 and s.num_computed_tokens >= s.num_prompt_tokens for s in seqs)
            token_ids = self.model_runner.run(seqs)
        except BaseException as e:  # Ctrl-C mid-step included: the workers are mid-step too
            self._fail(e)
        now = self.clock.now()
        if self.stats.spec_decode is not None:
            self.stats.spec_decode.record(seqs, token_ids)
        self.scheduler.postprocess(seqs, token_ids)
        generated = 0
        for seq in seqs:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = start
            new = seq.num_completion_tokens - len(seq.token_times)
            if new > 0:  # one time per token: a step that accepted drafts gave several at once
                seq.token_times.extend([now] * new)
                generated += new
                for sibling in self._held.pop(seq.seq_id, ()):  # the prompt's full blocks are cached now
                    self.scheduler.add(sibling)
                deltas.append(self._delta(self._requests[seq.request_id][seq.index], now))
        # a decode step counts the tokens it generated (a verify step computes more than it keeps)
        self.stats.record(generated if is_decode else num_tokens, now - start, is_decode)
        return deltas

    def _delta(self, request: LiveRequest, now: float) -> RequestDelta:
        """The completion's delta; a finished completion (a stop string may finish it here) leaves
        the engine, and the request with its last one (`delta.finished`)."""
        seq, delta = request.seq, request.delta(now)
        if delta.finish_reason is not None:
            if not seq.is_finished:  # a stop string ended it
                self.scheduler.finish(seq, "stop")
            self.model_runner.sampler.release(seq)
            completions = self._requests[seq.request_id]
            del completions[seq.index]
            delta.finished = not completions
            if delta.finished:
                del self._requests[seq.request_id]
        return delta

    def generate(self, prompts: list, sampling_params: list[SamplingParams], use_tqdm: bool = True,
                 priorities: list[int] | None = None, arrival_times: list[float] | None = None,
                 max_concurrency: int | None = None) -> list[RequestOutput]:
        """Every prompt run to completion, outputs in prompt order (see nvllm.engine.driver)."""
        return driver.generate(self, prompts, sampling_params, use_tqdm, priorities, arrival_times, max_concurrency)

    # -- faults and the end -----------------------------------------------------------------------
    def _fail(self, error: BaseException):
        """Under TP, a failure usually means a worker died: say which, stop every rank, re-raise."""
        workers, self.workers = getattr(self, "workers", None), None
        if workers is None:
            raise error
        comm_error = any(word in str(error).lower() for word in ("gloo", "nccl", "connection"))
        worker_error = workers.error() if workers.dead() or comm_error else None
        workers.abort()
        if worker_error is not None:
            self.failure = worker_error
            raise worker_error from error
        self.failure = error
        raise error

    def close(self):
        if getattr(self, "drafter", None) is not None:
            self.drafter.close()
            self.drafter = None
        if getattr(self, "model_runner", None) is not None:
            self.model_runner.close()
            self.model_runner = None
        if getattr(self, "workers", None) is not None:
            self.workers.close()
            self.workers = None


def _eos_ids(tokenizer, hf_config) -> frozenset[int]:
    ids = set()
    for source in (getattr(hf_config, "eos_token_id", None), tokenizer and tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(source)
    return frozenset(ids)


def startup_line(engine) -> str:
    """One line on what really runs: model, device, dtype, forward strategy, attention backend, KV cache."""
    c, runner, kv = engine.config, engine.model_runner, engine.kv_cache
    gib = kv.num_blocks * runner._block_bytes() / 2**30
    auto = lambda choice: " (auto)" if choice else ""  # noqa: E731
    return (f"nvllm: model={c.model.name} ({engine.model_path}{', RANDOM WEIGHTS' if engine.random_weights else ''}) "
            f"on {c.device}, {c.dtype}, tp={c.tp}; forward={c.forward.name}{auto(c.forward_choice)}, "
            f"attention={c.attention.name}{auto(c.attention_choice)}{', compile' if c.compile else ''}; "
            f"KV cache {kv.num_blocks} blocks x {kv.block_size} tokens = {gib:.2f} GiB; max_model_len={c.max_model_len}; "
            f"loaded in {engine.startup_s['load']:.1f} s, warmed up in {engine.startup_s['warmup']:.1f} s")
