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

    @property
    def num_speculative_tokens(self) -> int:
        return 0

    def propose(self, seqs):
        return [[] for _ in seqs]


@hookimpl
def register_drafters(register):
    register(NoSpeculation)
