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

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
