"""The speculative family: drafters that propose the tokens a sequence will probably generate
next, so that one forward pass of the target model verifies several of them at once.

A step with speculation (the engine's loop, nvllm/engine/llm_engine.py; the records, nvllm/step.py):

    drafter.lookahead(n)   how many slots a sequence may reserve this step, with n requests running
    scheduler.schedule(k)  a decoding sequence may reserve up to k cache slots past its last token
                           (plan.lookahead): what the token budget and free blocks leave once every
                           running sequence has its token
    drafter.draft(plan)    fills plan.drafts (at most the slots reserved; none is fine)
    executor.execute(plan) scores the last token and every draft in one forward pass and keeps the
                           longest prefix of drafts the target agrees with, plus one token of its
                           own (nvllm/speculative/verify.py)
    scheduler.update       appends the run, counts the accepted drafts as computed, and rolls the
                           cache slots of rejected drafts back (kv_cache.rollback)

A drafter's life: `cls.check(config, hf_config, target)` when the config resolves (raise
ConfigError naming the key and the fix), built as `cls(config, runner=...)` once the model runner
exists (the KV cache too), `propose(seqs, slots)` every step that reserved slots, `close()`."""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional

from nvllm.errors import ConfigError
from nvllm.sequence import Sequence
from nvllm.step import StepPlan


@dataclass
class SpeculativeConfig:
    """Fields every drafter shares (vLLM's names)."""
    name: str = ""
    # tokens drafted per sequence and step; the step verifies them and adds one token of its own
    num_speculative_tokens: int = 4
    # draft nothing in a step while more requests than this are running (a big batch already keeps
    # the processor busy: scoring drafts there costs about what it saves); null: draft at any batch
    disable_by_batch_size: Optional[int] = None
    # most drafts one step scores over all its sequences, shared out evenly (each still drafts at
    # most num_speculative_tokens); null: auto, 8 on a CPU (a step's rows cost little more than a
    # decode step only while they fill about one tile of the C step's matmuls; past that, drafts
    # cost what they save), no limit on CUDA (a decode step is memory-bound far further)
    max_num_draft_tokens: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.num_speculative_tokens, bool) or self.num_speculative_tokens < 1:
            raise ValueError(f"speculative.num_speculative_tokens={self.num_speculative_tokens!r} is not allowed: "
                             f"drafting needs at least 1 token (speculative=none turns speculation off)")
        if self.disable_by_batch_size is not None and self.disable_by_batch_size < 1:
            raise ValueError(f"speculative.disable_by_batch_size={self.disable_by_batch_size!r} is not allowed: use "
                             f"an integer >= 1, or null to draft at any batch size")
        if self.max_num_draft_tokens is not None and (isinstance(self.max_num_draft_tokens, bool)
                                                      or self.max_num_draft_tokens < 1):
            raise ValueError(f"speculative.max_num_draft_tokens={self.max_num_draft_tokens!r} is not allowed: use "
                             f"an integer >= 1, or null for auto")


class Drafter(ABC):
    name: ClassVar[str]
    Config = SpeculativeConfig

    @classmethod
    def check(cls, config, hf_config, target) -> None:
        """Raise ConfigError naming the key and the fix where this drafter cannot run: `hf_config`
        is the target checkpoint's transformers config, `target` the run's ForwardTarget (device,
        dtype, tp, the architecture class, attention backend)."""

    def __init__(self, config, runner):
        """`runner`: the engine's ModelRunner (its model loaded, KV cache allocated): a drafter
        that runs a model calls `runner.execute(inputs, num_layers=...)`."""
        self.config = config
        self.runner = runner

    @property
    def num_speculative_tokens(self) -> int:
        """Most tokens drafted per sequence and step (0: no speculation)."""
        return self.config.num_speculative_tokens

    @property
    def max_num_draft_tokens(self) -> int | None:
        """speculative.max_num_draft_tokens, auto resolved (None: no limit)."""
        limit = getattr(self.config, "max_num_draft_tokens", None)
        if limit is None and getattr(getattr(self.runner, "device", None), "type", "cpu") == "cpu":
            return 8
        return limit

    def lookahead(self, num_running: int) -> int:
        """Slots each decoding sequence may reserve for drafts in the next step, with `num_running`
        requests running: num_speculative_tokens, at most an even share of max_num_draft_tokens,
        and 0 past disable_by_batch_size."""
        limit = getattr(self.config, "disable_by_batch_size", None)
        if limit is not None and num_running > limit:
            return 0
        budget = self.max_num_draft_tokens
        k = self.num_speculative_tokens
        return k if budget is None else min(k, budget // max(num_running, 1))

    @abstractmethod
    def propose(self, seqs: list[Sequence], slots: list[int]) -> list[list[int]]:
        """For each sequence (every token but its last is in the cache), at most `slots[i]` tokens
        to follow its last one; fewer, or none, is fine. Called on rank 0 only."""

    def draft(self, plan: StepPlan) -> None:
        """Fill `plan.drafts` for the sequences that reserved slots (`plan.lookahead`)."""
        drafting = [i for i, n in enumerate(plan.lookahead or ()) if n]
        if not drafting:
            return
        plan.drafts = [[] for _ in plan.seqs]
        slots = [plan.lookahead[i] for i in drafting]
        for i, n, tokens in zip(drafting, slots, self.propose([plan.seqs[i] for i in drafting], slots)):
            plan.drafts[i] = list(tokens[:n])

    def close(self) -> None:
        """Drop what the drafter holds."""


def refuse(key: str, value, why: str) -> ConfigError:
    return ConfigError(f"speculative.{key}={value!r}: {why}")
