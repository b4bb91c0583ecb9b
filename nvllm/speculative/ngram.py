"""speculative=ngram: prompt lookup decoding. The last n tokens of a sequence (prompt and output)
are looked for earlier in it, n from prompt_lookup_max down to prompt_lookup_min; the tokens that
followed the latest earlier occurrence are the draft. A continuation that runs into the end of the
sequence goes on copying what it has just proposed, so a repeating stretch is drafted for as long
as it would go on repeating. No model runs: where nothing matches, nothing is drafted, and the
step is a plain decode step. It pays where the output copies the input (summaries, code edits,
quotes) and where generation loops."""
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nvllm.hookspecs import hookimpl
from nvllm.sequence import Sequence
from nvllm.speculative.base import Drafter, SpeculativeConfig, refuse


def lookup(tokens: np.ndarray, n_min: int, n_max: int, k: int) -> list[int]:
    """At most k tokens continuing `tokens`: what followed the latest earlier occurrence of its
    longest suffix of n_max..n_min tokens that occurs earlier; [] where none does."""
    length = len(tokens)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        # windows that start before the suffix itself does (at length - n)
        hits = np.flatnonzero((sliding_window_view(tokens[:length - 1], n) == tokens[length - n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            proposal: list[int] = []
            for i in range(start, start + k):  # past the end: copy what was just proposed
                proposal.append(int(tokens[i]) if i < length else proposal[i - length])
            return proposal
    return []


class NgramDrafter(Drafter):
    """Prompt lookup: drafts what followed the latest earlier occurrence of the last n tokens (no model)."""

    name = "ngram"

    @dataclass
    class Config(SpeculativeConfig):
        name: str = "ngram"
        # longest suffix (in tokens) looked up first
        prompt_lookup_max: int = 4
        # shortest suffix looked up before giving up on this step
        prompt_lookup_min: int = 2

        def __post_init__(self):
            super().__post_init__()
            if isinstance(self.prompt_lookup_min, bool) or self.prompt_lookup_min < 1:
                raise refuse("prompt_lookup_min", self.prompt_lookup_min, "the shortest suffix looked up must be >= 1")
            if self.prompt_lookup_max < self.prompt_lookup_min:
                raise refuse("prompt_lookup_max", self.prompt_lookup_max,
                              f"it must be >= speculative.prompt_lookup_min ({self.prompt_lookup_min})")

    def propose(self, seqs: list[Sequence]) -> list[list[int]]:
        c = self.config
        return [lookup(np.asarray(seq.token_ids), c.prompt_lookup_min, c.prompt_lookup_max, seq.num_lookahead_tokens)
                for seq in seqs]


@hookimpl
def register_drafters(register):
    register(NgramDrafter)
