import math
from dataclasses import dataclass
from numbers import Integral, Real

from nvllm.errors import short_repr
from nvllm.vllm_args import SAMPLING, refuse_unknown

INT64 = 2**63  # every integer a request carries fits the engine's int64 tensors (and a seed torch's uint64)

# the one max_tokens default: SamplingParams, `python -m nvllm.run`'s workloads and the server's
# completions and chat completions (docs/python-api.md)
DEFAULT_MAX_TOKENS = 128
# most completions of one prompt: each is a Sequence holding a copy of the prompt, so n bounds memory
MAX_N = 1024


@dataclass(slots=True)
class SamplingParams:
    """vLLM's SamplingParams, the fields nvllm implements (docs/python-api.md)."""
    # completions to generate from the prompt; they share its KV blocks through the prefix cache
    n: int = 1
    # 0 means greedy (argmax)
    temperature: float = 1.0
    # keep only the k most likely tokens; 0 keeps all
    top_k: int = 0
    # keep the smallest set of tokens whose probability reaches top_p; 1.0 keeps all
    top_p: float = 1.0
    # drop tokens less likely than min_p times the most likely one; 0.0 keeps all
    min_p: float = 0.0
    # divides the logits of tokens already in the prompt or output (multiplies negative ones); 1.0: off
    repetition_penalty: float = 1.0
    # subtracted from a token's logit if it was generated at all (OpenAI's); 0.0: off
    presence_penalty: float = 0.0
    # subtracted from a token's logit once per time it was generated (OpenAI's); 0.0: off
    frequency_penalty: float = 0.0
    # most tokens to generate
    max_tokens: int = DEFAULT_MAX_TOKENS
    # fewest tokens to generate: end-of-sequence and stop_token_ids are masked until then
    min_tokens: int = 0
    # keep generating past the end-of-sequence token (benchmarks)
    ignore_eos: bool = False
    # per-request seed: the same seed gives the same tokens whatever the batch (completion i of n uses seed + i)
    seed: int | None = None
    # stop strings: generation ends when the text contains one; the text ends before it
    stop: list[str] | None = None
    # token ids that end generation besides end-of-sequence (even with ignore_eos); their text is left out
    stop_token_ids: list[int] | None = None
    # per generated token, the logprobs of the sampled token and of this many most likely ones; None: none
    logprobs: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplingParams":
        """Every value checked for type and range (and normalised: numpy scalars to Python ones, a
        stop string to a list), so none can fail inside a step; ValueError names the first bad field.
        The engine runs this on its own copy of every request's params (the dataclass is mutable)."""
        self.n = _integer("n", self.n)
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be an integer in [1, {MAX_N}] (completions of one prompt; for more, send the "
                             f"prompt again), got {short_repr(self.n)}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            setattr(self, name, _number(name, getattr(self, name)))
        self.top_k, self.max_tokens = _integer("top_k", self.top_k), _integer("max_tokens", self.max_tokens)
        self.min_tokens = _integer("min_tokens", self.min_tokens)
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {short_repr(self.top_k)}")
        if self.top_k >= INT64:
            raise ValueError(f"top_k must be an integer in [0, 2**63) (0 = off), got {short_repr(self.top_k)}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be > 0 and finite (1 = off), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2] (0 = off), got {getattr(self, name)}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be >= 1, got {short_repr(self.max_tokens)}")
        if self.max_tokens >= INT64:
            raise ValueError(f"max_tokens must be an integer in [1, 2**63), got {short_repr(self.max_tokens)}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {short_repr(self.min_tokens)}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, Integral)
                                          or not 0 <= self.logprobs <= 20):
            raise ValueError(f"logprobs must be None or an integer in [0, 20] (0: the sampled token's only), "
                             f"got {short_repr(self.logprobs)}")
        self.logprobs = None if self.logprobs is None else int(self.logprobs)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {short_repr(self.ignore_eos)}")
        if self.seed is not None:
            if not isinstance(self.seed, Integral) or isinstance(self.seed, bool):
                raise ValueError(f"seed must be an integer or None, got {short_repr(self.seed)}")
            self.seed = int(self.seed)
            # completion i of n uses seed + i: every one must be a seed torch.Generator takes
            if not -INT64 <= self.seed <= 2 * INT64 - self.n:
                raise ValueError(f"seed must be an integer in [-2**63, 2**64) (what torch.Generator takes; "
                                 f"seed + n - 1 too), got {short_repr(self.seed)}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            if not (isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop)):
                raise ValueError(f"stop must be a string or a list of non-empty strings, got {short_repr(self.stop)}")
            self.stop = list(self.stop)
        if self.stop_token_ids is not None:
            if not (isinstance(self.stop_token_ids, (list, tuple)) and all(
                    isinstance(t, Integral) and not isinstance(t, bool) and 0 <= t < INT64 for t in self.stop_token_ids)):
                raise ValueError(f"stop_token_ids must be a list of token ids (integers in [0, 2**63)), "
                                 f"got {short_repr(self.stop_token_ids)}")
            self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        return self


# vLLM's fields that nvllm lacks are refused by name, with what nvllm offers instead
SamplingParams.__init__ = refuse_unknown(SAMPLING)(SamplingParams.__init__)


def _number(name: str, value) -> float:
    if not isinstance(value, Real) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {short_repr(value)}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        raise ValueError(f"{name} must be a number within float range, got {short_repr(value)}") from None


def _integer(name: str, value) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {short_repr(value)}")
    return int(value)
