from dataclasses import dataclass


@dataclass(slots=True)
class SamplingParams:
    # 0 means greedy (argmax)
    temperature: float = 1.0
    # keep only the k most likely tokens; 0 keeps all
    top_k: int = 0
    # keep the smallest set of tokens whose probability reaches top_p; 1.0 keeps all
    top_p: float = 1.0
    # most tokens to generate
    max_tokens: int = 64
    # keep generating past the end-of-sequence token (benchmarks)
    ignore_eos: bool = False
    # per-request seed: the same seed gives the same tokens whatever the batch
    seed: int | None = None
    # stop strings: generation ends when the text contains one; the text ends before it
    stop: list[str] | None = None
    # token ids that end generation besides end-of-sequence (even with ignore_eos); their text is left out
    stop_token_ids: list[int] | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
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
