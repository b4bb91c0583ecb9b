from dataclasses import dataclass

# the one max_tokens default: SamplingParams, `python -m nvllm.run`'s workloads and the server's
# completions and chat completions (docs/python-api.md)
DEFAULT_MAX_TOKENS = 128


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
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2] (0 = off), got {getattr(self, name)}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= 20):
            raise ValueError(f"logprobs must be None or an integer in [0, 20] (0: the sampled token's only), "
                             f"got {self.logprobs!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None:
            self.stop = list(self.stop)
            if not all(isinstance(s, str) and s for s in self.stop):
                raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.stop_token_ids is not None:
            self.stop_token_ids = list(self.stop_token_ids)
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
                raise ValueError(f"stop_token_ids must be a list of token ids (integers >= 0), got {self.stop_token_ids!r}")

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or bool(self.presence_penalty) or bool(self.frequency_penalty)
