"""Prompt lookup (speculative=ngram) against its definition, written out the slow way: for n from
prompt_lookup_max down to prompt_lookup_min, the latest window of n tokens before the last that
equals the last n; what followed it (k tokens, one where n = 1), copying its own proposal past the
end."""
import numpy as np
import pytest

from nvllm.speculative.ngram import lookup


def by_definition(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    length = len(tokens)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        starts = [s for s in range(length - n) if tokens[s:s + n] == tokens[length - n:]]
        if starts:
            proposal: list[int] = []
            for i in range(starts[-1] + n, starts[-1] + n + (k if n > 1 else 1)):
                proposal.append(tokens[i] if i < length else proposal[i - length])
            return proposal
    return []


@pytest.mark.parametrize("seed", range(4))
def test_lookup_follows_its_definition(seed):
    rng = np.random.default_rng(seed)
    for _ in range(2000):
        tokens = rng.integers(0, int(rng.integers(1, 5)), int(rng.integers(1, 40)))  # few ids: many matches
        n_min = int(rng.integers(1, 5))
        n_max, k = n_min + int(rng.integers(0, 4)), int(rng.integers(1, 9))
        assert lookup(tokens, n_min, n_max, k) == by_definition(tokens.tolist(), n_min, n_max, k), (tokens, n_min, n_max)
