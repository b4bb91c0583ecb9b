"""The engine loop: add requests, abort them, and step — schedule, launch the forward pass,
sample, settle the tokens — until every request has finished. Intake checks live in intake.py,
deltas and outputs in outputs.py, the offline `generate` driver in driver.py, what overlap
scheduling keeps between steps in overlap.py, a step that raises in faults.py. Components come
from the registry; none of this code sees a DictConfig or a plugin.

With async_scheduling a step launches the next batch before it collects the one in flight, so the
host schedules and packs while the device computes: each sequence of the batch in flight already
counts its coming token (PENDING) and a length limit is applied at launch; EOS, stop tokens and
stop strings are seen when the token arrives, a step later, and a sequence they end may have run
once more in the batch launched meanwhile: that token is dropped, its blocks freed. Greedy tokens
are the same either way."""
import logging
import time

from nvllm import registry
from nvllm.config import Config
from nvllm.distributed.workers import Workers
from nvllm.engine import driver, faults, intake
from nvllm.engine.clock import Clock
from nvllm.engine.detokenizer import Detokenizer
from nvllm.engine.model_runner import ModelRunner
from nvllm.engine.outputs import LiveRequest, RequestDelta, RequestOutput, SpecDecodingStats, StepStats
from nvllm.engine.overlap import Step
from nvllm.forward.base import computes_tensors
from nvllm.engine.startup import startup_line
from nvllm.engine.warmup import warm_up
from nvllm.models.weights import is_random, load_hf_config, resolve_model_path
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import PENDING, Sequence, SequenceStatus

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: Config):
        """`config`: the typed configuration (`Config.from_cfg` of a composed Hydra config)."""
        self.failure = None  # set when a fault stopped the engine
        self.clock = Clock()  # every timestamp below reads it (nvllm/engine/clock.py)
        started = time.perf_counter()
        # -- the model: weights, config resolved against it, tokenizer
        # (forward=simulated computes no tensors: no weights, no tokenizer, no workers, its own clock)
        computes = computes_tensors(config.forward)
        self.model_path = resolve_model_path(config.model, weights=computes)
        self.random_weights = is_random(self.model_path) and computes
        hf_config = load_hf_config(self.model_path)
        self.config = config = config.resolve(hf_config)
        self.tokenizer = intake.load_tokenizer(self.model_path) if computes else None
        # -- the model runner on rank 0, and under TP the other ranks' workers
        runner_args = (config, self.model_path)
        self.workers = Workers(config.tp, ModelRunner, runner_args) if config.tp > 1 and computes else None
        try:
            self.model_runner = ModelRunner(*runner_args, control_group=self.workers and self.workers.group)
        except BaseException as e:  # Ctrl-C included: the workers must not outlive it
            self._fail(e)
        self.clock = self.model_runner.forward_strategy.clock or self.clock
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
        self._in_flight: Step | None = None  # async_scheduling: the step launched and not yet collected
        self._last_collect = float("-inf")

    # -- add / abort ------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        return intake.encode(prompt, self.tokenizer, self.model_path)

    def add_request(self, request_id: str, prompt: str | list[int], sampling_params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0, stream: bool = True) -> Sequence:
        """Validate and queue one request; a bad one raises ValueError and changes nothing.
        `arrival_time` (on `self.clock`; default now) may be in the future: the request is held
        until then, and its TTFT counts from then. `stream=False` (vLLM's final-only output) gives
        one delta per completion, when it finishes, with all its tokens and its text decoded once. With `sampling_params.n > 1` its
        other completions wait until the first has computed the prompt, then find its full blocks in
        the prefix cache. Returns the request's (first) Sequence."""
        if getattr(self, "model_runner", None) is None:
            raise RuntimeError("the engine is closed: create a new LLM to generate again")
        if self.failure is not None:
            raise RuntimeError(f"the engine stopped after a failure ({self.failure}); create a new LLM")
        seq = intake.new_sequence(self, request_id, prompt, sampling_params, arrival_time, priority, stream)
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already running; ids must be unique among live requests")
        now = self.clock.now()
        others = intake.siblings(seq)
        self._requests[request_id] = {s.index: LiveRequest(s, Detokenizer(self.tokenizer, s.sampling_params.stop, stream))
                                      for s in (seq, *others)}
        if others and getattr(self.config.kv_cache, "prefix_caching", False):
            self._held[seq.seq_id], others = others, []  # added once `seq` has computed the prompt
        for s in (seq, *others):
            if s.arrival_time > now:
                self._arrivals.add(s)  # held until it is due
            else:
                self.scheduler.add(s)
        return seq

    def abort_request(self, request_id: str, error: str | None = None) -> None:
        """Finish a live request (every completion) with finish_reason "abort" (or "error", carrying
        `error`, when a fault ended it) and free its blocks now; its last deltas come with the next
        step. An unknown or finished id is ignored."""
        completions = self._requests.get(request_id)
        if completions is None:
            return
        now, reason = self.clock.now(), "abort" if error is None else "error"
        held = self._held.pop(completions[0].seq.seq_id, []) if 0 in completions else []
        for request in list(completions.values()):
            seq = request.seq
            if any(s is seq for s in held) or self._arrivals.remove(seq):
                seq.status = SequenceStatus.FINISHED  # never reached the scheduler
            else:
                self.scheduler.finish(seq, reason)
            if seq.last_token == PENDING:  # its step is in flight: that token is dropped
                seq.drop_pending_token()
            seq.finish_reason = reason
            self._aborted.append(self._delta(request, now))
            self._aborted[-1].error = error

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
        for each request that advanced or finished (with async_scheduling, in the step after)."""
        deltas, self._aborted = self._aborted, []
        in_flight, self._in_flight = self._in_flight, None
        idle = not deltas and in_flight is None and self.scheduler.is_finished()
        for seq in self._arrivals.due(wait=idle):
            self.scheduler.add(seq)
        seqs, step, fault = None, None, None
        if not self.scheduler.is_finished():
            self.scheduler.num_lookahead_tokens = self.drafter.lookahead(len(self.scheduler.running))
            seqs = self.scheduler.schedule()
            if not seqs:
                raise RuntimeError("the scheduler picked nothing while requests are pending")
            start = self.clock.now()
            _, fault = self._attempt(self.drafter.draft, seqs)  # speculative decoding's drafts (speculative=none: none)
            if fault is None:
                step, fault = self._attempt(self.model_runner.launch, seqs, in_flight)
        if in_flight is not None:  # its tokens settle before this step samples (EOS ends a sequence)
            deltas += self._settle(in_flight)
        if seqs is None:
            return deltas
        if fault is None:
            _, fault = self._attempt(self.model_runner.sample, step)
        if fault is not None:  # the requests that raise alone end; the others' tokens are sampled
            step = faults.isolate(self, seqs, fault)
        step.launched = start
        if not step.is_decode:
            for seq in step.seqs:
                if seq.first_scheduled_time is None:
                    seq.first_scheduled_time = start
        self.scheduler.advance(step.seqs)
        if self.config.async_scheduling and fault is None:
            self._in_flight = step
        else:
            deltas += self._settle(step)
        return deltas

    def _attempt(self, call, *args):
        """(`call(*args)`, None), or (None, the Exception it raised: one request's data or a bug, for
        faults.isolate to trace). Under TP, and on Ctrl-C mid-step, the engine stops instead: the
        workers are mid-step too."""
        try:
            return call(*args), None
        except Exception as e:
            if self.workers is not None:
                self._fail(e)
            return None, e
        except BaseException as e:
            self._fail(e)

    def _runner(self, call, *args):
        try:
            return call(*args)
        except BaseException as e:  # Ctrl-C mid-step included: the workers are mid-step too
            self._fail(e)

    def _settle(self, step: Step) -> list[RequestDelta]:
        """Collect `step`'s tokens, settle them (EOS and stop tokens finish), and the deltas."""
        token_ids = self._runner(self.model_runner.collect, step)
        now = self.clock.now()
        if self.stats.spec_decode is not None:  # before settle clears the drafts
            self.stats.spec_decode.record(step.seqs, token_ids)
        self.scheduler.settle(step.seqs, token_ids)
        deltas, requests, held, generated = [], self._requests, self._held, 0
        for seq in step.seqs:
            new = seq.num_tokens - seq.num_prompt_tokens - len(seq.token_times)
            if new > 0:  # one time per token: a step that accepted drafts gave several at once
                if new == 1:
                    seq.token_times.append(now)
                else:
                    seq.token_times.extend([now] * new)
                generated += new
                if held:  # siblings (n > 1) wait for the first completion: the prompt's full blocks are cached now
                    for sibling in held.pop(seq.seq_id, ()):
                        self.scheduler.add(sibling)
                live = requests[seq.request_id][seq.index]
                if live.detokenizer.incremental or seq.status is SequenceStatus.FINISHED:  # stream=False: the last only
                    deltas.append(self._delta(live, now))
        # a step's time: from its launch, or from when the one before it was collected if later; a
        # decode step counts the tokens it generated (a verify step computes more than it keeps)
        self.stats.record(generated if step.is_decode else step.num_tokens, now - max(step.launched, self._last_collect),
                          step.is_decode)
        self._last_collect = now
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
