"""The forward family: how a step's forward pass runs, from packed inputs to logits.

The model runner loads the model, builds the attention backend, packs each step's inputs and
samples; what lies between — running the model's torch modules (`eager`), replaying a captured
decode CUDA graph (`cudagraph`), one C call for the whole step (`fused_cpu`) — is a forward
strategy. `forward=auto` takes the best-ranked one whose `check` passes where the run happens
(nvllm/auto.py). A strategy's life in the runner:

    cls.check(target)          can it run here? raise ConfigError naming the reason and the fix
    cls.resolve(config, target)  its Config with every `auto` option filled in (metrics.json shows it)
    strategy = cls(config, runner)  after the weights are loaded and the attention backend built
    strategy.decode_batch      the largest decode batch it runs (the KV-cache sizing warms up with it)
    strategy.bind_kv_cache()   once the cache is allocated: capture graphs, take pointers into it
    strategy(input_ids, positions, meta) -> logits at `logits_rows(meta)`, every step (a draft step,
                               meta.num_layers set, runs only the model's first layers)
    strategy.close()

forward=simulated is not a strategy but an executor of its own (nvllm/step.py's Executor): it
stands in for the model runner, loading no weights and computing no tensors; it is registered in
this family so that `forward=simulated` chooses it (`standalone_executor`)."""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from nvllm import registry
from nvllm.attention.base import AttentionMetadata
from nvllm.step import Executor


@dataclass(frozen=True)
class ForwardTarget:
    """What a strategy's `check` and `resolve` see: where the run happens and what else it chose."""
    device: torch.device
    dtype: torch.dtype
    tp: int
    # the architecture class (a nvllm.models.base.CausalLM subclass)
    model: type
    # the attention backend's name, after attention=auto
    attention: str
    # compile=true: the torch modules' hot pieces are torch.compile'd
    compile: bool
    # the weight format (nvllm/quantization/): none keeps weights in dtype
    quantization: str = "none"
    # moe.expert_parallel: whole experts on each rank (else tp splits every expert's width)
    expert_parallel: bool = False


def logits_rows(meta: AttentionMetadata) -> torch.Tensor:
    """The packed rows whose logits a step returns: each sequence's last query token, or its last
    `meta.num_logits[b]` (a speculative verify step scores every drafted token), in order."""
    if meta.num_logits is None:
        return meta.cu_seqlens_q[1:].long() - 1
    rows, end = [], 0
    for q_len, n in zip(meta.query_lens, meta.num_logits):
        end += q_len
        rows.extend(range(end - n, end))
    return torch.tensor(rows, dtype=torch.long, device=meta.cu_seqlens_q.device)


def model_kwargs(meta: AttentionMetadata) -> dict:
    """Keyword arguments of the model's forward for this step: `num_layers` for a draft step only
    (an architecture that cannot stop early never sees it: speculative=draft refuses it)."""
    return {} if meta.num_layers is None else {"num_layers": meta.num_layers}


class ForwardStrategy(ABC):
    name: ClassVar[str]
    # forward=auto's order of preference per device type ("cuda", "cpu"), lowest first; a strategy
    # that does not rank a device type is never auto's choice there (but may be asked for)
    auto_rank: ClassVar[dict[str, int]] = {}

    @classmethod
    def check(cls, target: ForwardTarget) -> None:
        """Raise ConfigError naming the reason and the fix where this strategy cannot run."""

    @classmethod
    def resolve(cls, config, target: ForwardTarget):
        """`config` with its `auto` options decided for `target` (refusing those that cannot be)."""
        return config

    def __init__(self, config, runner):
        """`runner`: the engine's ModelRunner, its model loaded and attention backend built; the
        KV cache does not exist yet."""
        self.config = config
        self.runner = runner
        self.model = runner.model

    @property
    def decode_batch(self) -> int:
        """The largest decode batch this strategy runs."""
        c = self.runner.config
        return min(c.max_num_seqs, c.max_num_batched_tokens)

    def bind_kv_cache(self) -> None:
        """Called once the KV cache is allocated (and before the first step)."""

    @abstractmethod
    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """Logits [len(logits_rows(meta)), vocab] (None on a tensor-parallel worker); writes this
        step's K/V into the cache."""

    def close(self) -> None:
        """Drop what the strategy holds (graphs, packed copies, pointers into the cache)."""

    def describe(self) -> dict | None:
        """What metrics.json records of the strategy beyond its config (None: nothing)."""
        return None

    def count_experts(self) -> list[torch.Tensor] | None:
        """A strategy that routes a mixture of experts' tokens without the layers' forward starts
        counting them (moe.expert_load): one int64 tensor per MoE layer, in layer order, that its steps
        add the rows routed to each expert to (num_experts entries first; what follows is the
        strategy's own). None: the layers count, as their forward routes."""
        return None


def standalone_executor(forward_config) -> type[Executor] | None:
    """The executor class a config's forward names when it stands in for the model runner
    (forward=simulated), else None: the model runner runs the named strategy (or auto's)."""
    name = forward_config if isinstance(forward_config, str) else forward_config.name
    cls = None if name == "auto" else registry.get("forward", name)
    return cls if issubclass(cls or object, Executor) else None
