"""speculative=ngram: prompt lookup decoding. The last n tokens of a sequence (prompt and output)
are looked for earlier in it, n from prompt_lookup_max down to prompt_lookup_min; the tokens that
followed the latest earlier occurrence are the draft: num_speculative_tokens of them, or only one
where the match is the last token alone (n = 1), which guesses right far less often than a longer
match, so that such a guess costs one scored row rather than k. A continuation that runs into the
end of the sequence goes on copying what it has just proposed, so a repeating stretch is drafted
for as long as it would go on repeating. No model runs: where nothing matches, nothing is drafted,
and the step is a plain decode step. It pays where the output copies the input (summaries, code
edits, quotes) and where generation loops."""
from dataclasses import dataclass

import numpy as np

from nvllm.hookspecs import hookimpl
from nvllm.sequence import Sequence
from nvllm.speculative.base import Drafter, SpeculativeConfig, refuse


def lookup(tokens: np.ndarray, n_min: int, n_max: int, k: int) -> list[int]:
    """At most k tokens continuing `tokens`: what followed the latest earlier occurrence of its
    longest suffix of n_max..n_min tokens that occurs earlier (one token where that suffix is one
    token long); [] where none does."""
    length = len(tokens)
    n_max = min(n_max, length - 1)
    if n_max < n_min:
        return []
    # where an earlier occurrence could end: the last token's earlier places; then how many tokens
    # (up to n_max) match backwards from each
    ends = np.flatnonzero(tokens[:length - 1] == tokens[length - 1])
    matched = np.ones(len(ends), dtype=np.int64)
    alive = np.ones(len(ends), dtype=bool)
    for m in range(1, n_max):
        alive &= (ends >= m) & (tokens[np.maximum(ends - m, 0)] == tokens[length - 1 - m])
        matched += alive
    n = int(matched.max()) if len(ends) else 0
    if n < n_min:
        return []
    start = int(ends[matched >= n][-1]) + 1
    if n == 1:
        k = min(k, 1)
    proposal: list[int] = []
    for i in range(start, start + k):  # past the end: copy what was just proposed
        proposal.append(int(tokens[i]) if i < length else proposal[i - length])
    return proposal


class NgramDrafter(Drafter):
    """Prompt lookup: drafts what followed the latest earlier occurrence of the last n tokens (no model)."""

    name = "ngram"

    @dataclass
    class Config(SpeculativeConfig):
        name: str = "ngram"
        # drafting costs no model call, and copied stretches run long: more per step than a model drafter
        num_speculative_tokens: int = 8
        # longest suffix (in tokens) looked up first
        prompt_lookup_max: int = 4
        # shortest suffix looked up before giving up on this step (a one-token match drafts one token)
        prompt_lookup_min: int = 1

        def __post_init__(self):
            super().__post_init__()
            if isinstance(self.prompt_lookup_min, bool) or self.prompt_lookup_min < 1:
                raise refuse("prompt_lookup_min", self.prompt_lookup_min, "the shortest suffix looked up must be >= 1")
            if self.prompt_lookup_max < self.prompt_lookup_min:
                raise refuse("prompt_lookup_max", self.prompt_lookup_max,
                              f"it must be >= speculative.prompt_lookup_min ({self.prompt_lookup_min})")

    def propose(self, seqs: list[Sequence], slots: list[int]) -> list[list[int]]:
        c = self.config
        return [lookup(np.asarray(seq.token_ids), c.prompt_lookup_min, c.prompt_lookup_max, n)
                for seq, n in zip(seqs, slots)]


@hookimpl
def register_drafters(register):
    register(NgramDrafter)
