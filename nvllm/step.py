"""One engine step as three records, and the contract of what turns the first into the second:

    plan = scheduler.schedule(lookahead)       StepPlan: what each sequence runs (nvllm/scheduler/base.py)
    drafter.draft(plan)                        speculative decoding: drafts into the plan's reserved slots
    result = executor.execute(plan)            StepResult: what the model sampled (an Executor)
    update = scheduler.update(plan, result, now)  StepUpdate: the tokens appended, the sequences finished

The scheduler is the one writer of a Sequence's state; the executor, the drafter and the output
layer read it. Executors: the model runner (nvllm/engine/model_runner.py: pack, forward strategy,
sample) and the simulator (nvllm/forward/simulated.py: a cost model and a virtual clock).
Overlap scheduling holds a launched step's result for one step (nvllm/engine/llm_engine.py)."""
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from nvllm.sequence import Sequence


@dataclass(slots=True)
class StepPlan:
    """What one step runs. Sequence i runs `num_tokens[i]` of its tokens from its
    num_computed_tokens, and samples its next token when `samples[i]` (a prefill chunk that leaves
    part of its prompt for later does not)."""
    seqs: list[Sequence]
    num_tokens: list[int]
    samples: list[bool]
    # every sequence runs its one next token (and its drafts): a decode step; else a prefill or mixed step
    is_decode: bool
    # speculative decoding: per sequence, the cache slots reserved past its last token for drafts (None:
    # none this step), and the drafts the drafter put there (at most that many each), which the step scores
    lookahead: list[int] | None = None
    drafts: list[list[int]] | None = None
    # when the engine launched it (its clock); set by the engine
    launched: float = 0.0
    # overlap scheduling: its tokens were counted at launch (scheduler.commit), before its result arrived
    committed: bool = False

    @classmethod
    def of(cls, seqs: list[Sequence], num_tokens: list[int]) -> "StepPlan":
        """The plan that runs `num_tokens[i]` tokens of `seqs[i]` from its num_computed_tokens
        (warm-up, the profiler, fault isolation and tests build steps by hand)."""
        samples = [s.num_computed_tokens + n >= s.num_tokens for s, n in zip(seqs, num_tokens)]
        return cls(seqs, num_tokens, samples, all(samples) and all(n == 1 for n in num_tokens))

    def subset(self, rows: list[int]) -> "StepPlan":
        """The plan of `seqs[i]` for each i in `rows` only (fault isolation runs sequences alone)."""
        pick = lambda values: None if values is None else [values[i] for i in rows]  # noqa: E731
        plan = StepPlan.of(pick(self.seqs), pick(self.num_tokens))
        plan.samples, plan.lookahead, plan.drafts, plan.launched = pick(self.samples), pick(self.lookahead), \
            pick(self.drafts), self.launched
        return plan

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


@dataclass(slots=True)
class StepResult:
    """What the model gave for a plan: per sequence, its sampled token id, its verified run after a
    step with drafts (the accepted drafts, then one token of the model's own), or None where it
    sampled nothing; with SamplingParams.logprobs, per sequence one {token id: (logprob, rank)} per
    token given (else None)."""
    tokens: list
    logprobs: list | None = None


@dataclass(slots=True)
class StepUpdate:
    """What `scheduler.update` did: the sequences that got tokens, how many each, and those that
    finished (the reason is the sequence's finish_reason)."""
    seqs: list[Sequence] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)


class Executor(ABC):
    """Turns a StepPlan into a StepResult. The engine builds one per run (forward=simulated: the
    simulator; any other forward strategy: the model runner, which runs that strategy)."""
    # a clock of its own (the simulator's virtual one), which the engine then reads; None: real time
    clock = None
    # KV cache blocks the run has (sized once the weights are loaded)
    num_blocks: int

    @abstractmethod
    def execute(self, plan: StepPlan) -> StepResult:
        """Run the plan start to end: its forward pass, then its samples."""

    def launch(self, plan: StepPlan, held=None):
        """Overlap scheduling: start `plan` (its inputs may be `held`'s samples, not yet on the host)
        and return a handle; `sample(handle, finished)` then `collect(handle)` finish it."""
        return plan

    def sample(self, handle) -> None:
        """Overlap scheduling: draw the launched step's tokens (not for a sequence that finished
        while the step ran)."""

    def collect(self, handle) -> StepResult:
        """Overlap scheduling: the launched step's result, on the host."""
        return self.execute(handle)

    def warm_up(self) -> None:
        """Pay first-call costs (compilation, kernel loading) before the first request."""

    def check_request(self, prompt, sampling_params) -> None:
        """Raise ValueError naming the fix for a request this executor cannot run honestly."""

    @abstractmethod
    def block_bytes(self) -> int:
        """One KV cache block's bytes (on one tensor-parallel rank)."""

    def describe(self) -> dict | None:
        """What metrics.json records of the executor (None: nothing beyond the config)."""
        return None

    def weight_bytes(self) -> int | None:
        """Bytes the model's weights hold resident (on one tensor-parallel rank); None: no weights."""
        return None

    def expert_load(self) -> dict[int, list[int]] | None:
        """Tokens routed to each expert of each mixture-of-experts layer since the warm-up, by layer
        index (moe.expert_load); None: no such layers, or not counted."""
        return None

    def release(self, seq: Sequence) -> None:
        """Forget per-request state once `seq` has finished."""

    def close(self) -> None:
        """Free what it holds."""
