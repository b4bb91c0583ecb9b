"""The engine loop: add requests, abort them, and step. A step is three records (nvllm/step.py):
the scheduler's plan, the executor's result, the scheduler's update, off which the deltas are read
(outputs.py). The parts are built in build.py, requests checked in intake.py, a step that raises
handled in faults.py. With async_scheduling (`_overlap_step`) the next plan is launched before the
held one's result is applied: EOS and stop strings are seen a step late, and a sequence they end
loses the token of the plan launched meanwhile. Greedy tokens are the same either way."""
import logging

from nvllm.config import Resolved
from nvllm.engine import driver, faults, intake
from nvllm.engine.build import build
from nvllm.engine.detokenizer import Detokenizer
from nvllm.engine.outputs import LiveRequest, RequestDelta, RequestOutput, SpecDecodingStats, StepStats
from nvllm.engine.startup import startup_line
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence
from nvllm.step import StepPlan, StepResult

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, resolved: Resolved):
        """`resolved`: the run as the edge decided it (`nvllm.config.prepare(Config.from_cfg(cfg))`:
        the checkpoint's config and tokenizer read, every `auto` resolved); every component is built
        from it by nvllm/engine/build.py."""
        self.failure = None  # set when a fault stopped the engine
        parts = build(resolved)
        self.config, self.model_path, self.random_weights = parts.config, parts.model_path, parts.random_weights
        self.vocab_size, self.tokenizer, self.workers = parts.vocab_size, parts.tokenizer, parts.workers
        self.executor, self.kv_cache, self.scheduler = parts.executor, parts.kv_cache, parts.scheduler
        self.drafter, self.clock, self.startup_s = parts.drafter, parts.clock, parts.startup_s
        logger.info(startup_line(self))
        # -- requests: live ones by id, those not yet due, the last deltas of aborted ones
        num_drafted = self.drafter.num_speculative_tokens
        self.stats = StepStats(spec_decode=SpecDecodingStats(num_drafted) if num_drafted else None)
        self._requests: dict[str, dict[int, LiveRequest]] = {}  # id -> its live completions by index
        self._held: dict[int, list[Sequence]] = {}  # a first completion's seq id -> its siblings, not yet added
        self._arrivals = intake.Arrivals(self.clock)
        self._aborted: list[RequestDelta] = []  # the next step returns them
        self._in_flight = None  # async_scheduling: the step launched and not yet collected

    # -- add / abort ------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], sampling_params: SamplingParams,
                    arrival_time: float | None = None, priority: int = 0, stream: bool = True) -> Sequence:
        """Validate and queue one request (a bad one raises ValueError and changes nothing); returns its
        first Sequence. `arrival_time` (on `self.clock`, default now) may be in the future: it is held
        until then. `stream=False` (vLLM's final-only output): one delta per completion, when it ends.
        With `n > 1` the other completions start once the first has computed the prompt (prefix cache)."""
        if getattr(self, "executor", None) is None:
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
        `error`, when a fault ended it) and free its blocks now (a token of a step in flight is
        dropped); its last deltas come with the next step. An unknown or finished id is ignored."""
        completions = self._requests.get(request_id)
        if completions is None:
            return
        now, reason = self.clock.now(), "abort" if error is None else "error"
        if 0 in completions:
            self._held.pop(completions[0].seq.seq_id, None)  # its siblings not yet added go with it
        for request in list(completions.values()):
            self._arrivals.remove(request.seq)
            self.scheduler.finish(request.seq, reason, now)
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

    # -- step -------------------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """One scheduling step; sleeps until the next arrival when nothing is due. Returns a delta
        for each request that advanced or finished (with async_scheduling, in the step after)."""
        deltas, self._aborted = self._aborted, []
        if self._arrivals:
            for seq in self._arrivals.due(wait=not deltas and self._in_flight is None and self.scheduler.is_finished()):
                self.scheduler.add(seq)
        try:
            return deltas + (self._overlap_step() if self.config.async_scheduling else self._sync_step())
        except BaseException as e:  # under TP the workers are mid-step too (Ctrl-C included): stop them
            self._fail(e)

    def _sync_step(self) -> list[RequestDelta]:
        plan = self._plan()
        if plan is None:
            return []
        try:
            result = self.executor.execute(plan)
        except Exception as e:
            plan, result = self._isolate(plan, e)
        return self._apply(plan, result)

    def _overlap_step(self) -> list[RequestDelta]:
        """Launch the next plan, then apply the held one's result (its EOS and stop tokens end
        sequences before the new plan samples), then sample the new plan and hold it."""
        held, self._in_flight = self._in_flight, None
        plan, flight, fault = self._plan(), None, None
        if plan is not None:
            try:
                flight = self.executor.launch(plan, held)
            except Exception as e:
                fault = e
        deltas = self._apply(held.plan, self.executor.collect(held)) if held is not None else []
        if flight is not None:
            try:
                self.executor.sample(flight)
            except Exception as e:
                fault = e
        if fault is not None:  # run alone now that the held step's tokens are on the host
            return deltas + self._apply(*self._isolate(plan, fault))
        if plan is not None:
            self.scheduler.commit(plan)
            self._in_flight = flight
        return deltas

    def _plan(self) -> StepPlan | None:
        """The scheduler's plan (with the drafter's drafts when it reserved slots), stamped with its
        launch time; None when no request is waiting or running."""
        plan = self.scheduler.schedule(self.drafter.lookahead(len(self.scheduler.running)) if self.stats.spec_decode else 0)
        if not plan.seqs:
            if self.scheduler.is_finished():
                return None
            raise RuntimeError("the scheduler picked nothing while requests are pending")
        if plan.lookahead:
            self.drafter.draft(plan)  # (a drafter raising is a step that raises: see _isolate)
        plan.launched = self.clock.now()
        return plan

    def _isolate(self, plan: StepPlan, error: Exception) -> tuple[StepPlan, StepResult]:
        if self.workers is not None:
            raise error  # the ranks are mid-step: the engine stops (step's handler)
        return faults.isolate(self.executor, plan, error, self.abort_request)

    def _apply(self, plan: StepPlan, result: StepResult) -> list[RequestDelta]:
        """The scheduler's update from `plan`'s result, and a delta for each completion it advanced."""
        now = self.clock.now()
        update = self.scheduler.update(plan, result, now)
        self.stats.record(plan, result, update, now)
        if self._held:  # siblings (n > 1) wait for the first completion: the prompt's full blocks are cached now
            for sibling in (s for seq in update.seqs for s in self._held.pop(seq.seq_id, ())):
                self.scheduler.add(sibling)
        lives = [self._requests[seq.request_id][seq.index] for seq in update.seqs]
        # stream=False (the detokenizer is not incremental): the last delta only
        return [self._delta(live, now) for live in lives if live.detokenizer.incremental or live.seq.is_finished]

    def _delta(self, request: LiveRequest, now: float) -> RequestDelta:
        """The completion's delta; a finished completion (a stop string may finish it here) leaves
        the engine, and the request with its last one (`delta.finished`)."""
        seq, delta = request.seq, request.delta(now, self.scheduler)
        if delta.finish_reason is not None:
            self.executor.release(seq)
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
        """Re-raise; under TP first stop every rank, and raise a dead worker's error naming it."""
        workers, self.workers = self.workers, None
        if workers is None:
            raise error
        self.failure = workers.fail(error)
        if self.failure is error:
            raise error
        raise self.failure from error

    def close(self):
        for name in ("drafter", "executor", "workers"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
                setattr(self, name, None)
