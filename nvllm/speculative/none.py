"""speculative=none: no drafts; every decode step computes one token per sequence."""
from dataclasses import dataclass

from nvllm.hookspecs import hookimpl
from nvllm.speculative.base import Drafter


class NoSpeculation(Drafter):
    """No speculative decoding: one token per sequence and decode step (the default)."""

    name = "none"

    @dataclass
    class Config:
        name: str = "none"
        # not used: nothing is drafted. It is here so that one sweep composes every cell of
        # `-m speculative=none,ngram speculative.num_speculative_tokens=2,4` (none's cells: the baseline)
        num_speculative_tokens: int = 0

    @property
    def num_speculative_tokens(self) -> int:
        return 0

    def propose(self, seqs, slots):
        return [[] for _ in seqs]


@hookimpl
def register_drafters(register):
    register(NoSpeculation)
