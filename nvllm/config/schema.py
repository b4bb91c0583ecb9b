"""What a configuration may say: the engine-wide switches (`EngineConfig`, their defaults live here
only), `python -m nvllm.serve`'s own (`ServeConfig`), and the primary config's schema Hydra composes
against (`Schema`), whose family fields and defaults follow nvllm.registry.FAMILIES."""
import math
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from nvllm.auto import tristate
from nvllm.errors import ConfigError
from nvllm.metrics import MetricsConfig, SLOConfig
from nvllm.models.base import MoEConfig
from nvllm.registry import FAMILIES
from nvllm.sampling_params import SamplingParams


@dataclass
class EngineConfig:
    """The engine-wide switches: the top level of the Hydra config (their defaults live here only)."""
    # tensor-parallel ranks
    tp: int = 1
    # torch.compile the model's hot pieces (forward=eager and cudagraph run them; auto then skips fused_cpu)
    compile: bool = False
    # decode CUDA graphs: auto (as forward=auto decides), true (= forward=cudagraph), false (never)
    cudagraph: Any = "auto"
    # auto (CPU: float32, the float32 reference's numbers; CUDA: the checkpoint's 16-bit dtype or bfloat16), float32,
    # bfloat16, float16 (CPU fused_cpu: 16-bit weights, float32 activations and sums)
    dtype: str = "auto"
    # auto (cuda when present), cpu, cuda
    device: str = "auto"
    # most sequences in one step
    max_num_seqs: int = 512
    # most tokens in one step; null = auto: 16384 on CUDA, max(4096, max_model_len) on a CPU (where
    # steps of a few thousand rows keep the activations in cache)
    max_num_batched_tokens: Optional[int] = None
    # longest sequence (prompt + output); null = auto: 4096, or the model's max_position_embeddings where
    # smaller. A value above the model's max_position_embeddings is refused
    max_model_len: Optional[int] = None
    # global seed for unseeded sampling
    seed: int = 0
    # overlap scheduling: schedule and pack step N+1 while step N runs; auto: on where the device runs
    # asynchronously to the host (CUDA), true, false
    async_scheduling: Any = "auto"
    # a mixture of experts' placement on tensor-parallel ranks (moe.expert_parallel)
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self):
        self.cudagraph = tristate("cudagraph", self.cudagraph)  # None: auto
        self.async_scheduling = tristate("async_scheduling", self.async_scheduling)  # None: auto
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device={self.device!r} is not allowed: use auto, cpu or cuda")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype={self.dtype!r} is not allowed: use auto, float32, bfloat16 or float16")
        for name in ("tp", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} is not allowed: it must be an integer >= 1")
            if value is not None and value >= 2**63:
                raise ConfigError(f"{name}={value} is not allowed: it must be an integer in [1, 2**63)")
        if isinstance(self.seed, int) and not -2**63 <= self.seed < 2**64:  # what torch.manual_seed takes
            raise ConfigError(f"seed={self.seed} is not allowed: it must be an integer in [-2**63, 2**64)")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class ServeConfig:
    """`python -m nvllm.serve`'s own switches: where it listens, who may call it, how much one request
    may send, and how long it drains on SIGTERM or Ctrl-C (docs/serving.md)."""
    # address to listen on (0.0.0.0: every interface; then set an API key)
    host: str = "127.0.0.1"
    # TCP port; 0 takes any free one (the address printed says which)
    port: int = 8000
    # what every /v1 request must send as `Authorization: Bearer <key>`; null: $NVLLM_API_KEY, else no key
    api_key: Optional[str] = None
    # Host headers answered (against DNS rebinding); null: localhost, 127.0.0.1 and ::1 when bound to
    # loopback, any otherwise; ["*"]: any
    allowed_hosts: Optional[list[str]] = None
    # origins a browser may call the API from (CORS); empty: none
    cors_origins: list[str] = field(default_factory=list)
    # seconds running requests get to finish after SIGTERM or Ctrl-C; the rest then end with an error
    drain_timeout_s: float = 5.0
    # largest request body, in bytes (413 beyond)
    max_body_bytes: int = 1_048_576
    # longest text prompt (for chat: all messages' text) in characters; null: 16 per token of max_model_len
    max_prompt_chars: Optional[int] = None
    # most chat messages in one request
    max_messages: int = 1024
    # most stop strings in one request
    max_stop: int = 16
    # longest stop string, in characters
    max_stop_chars: int = 256
    # most stop_token_ids in one request
    max_stop_token_ids: int = 256

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"serve.host={self.host!r} is not allowed: use a host name or an IP address such as 127.0.0.1")
        try:
            socket.getaddrinfo(self.host, None)
        except OSError as e:
            raise ConfigError(f"serve.host={self.host!r} does not resolve here ({e}); use 127.0.0.1, 0.0.0.0 "
                              f"or a name this machine knows") from None
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port={self.port!r} is not allowed: use an integer in 0..65535 (0: any free port)")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ConfigError("serve.api_key must be a string (or set NVLLM_API_KEY)")
        for name in ("allowed_hosts", "cors_origins"):
            value = getattr(self, name)
            if value is not None:
                value = list(value)
                if not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"serve.{name}={value!r} is not allowed: use a list of non-empty strings")
                setattr(self, name, value)
        if isinstance(self.drain_timeout_s, bool) or not isinstance(self.drain_timeout_s, (int, float)) \
                or not (math.isfinite(self.drain_timeout_s) and self.drain_timeout_s >= 0):
            raise ConfigError(f"serve.drain_timeout_s={self.drain_timeout_s!r} is not allowed: use seconds >= 0")
        for name in ("max_body_bytes", "max_prompt_chars", "max_messages", "max_stop", "max_stop_chars",
                     "max_stop_token_ids"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"serve.{name}={value!r} is not allowed: use an integer >= 1")


def family_fields(cls):
    """`cls` with one field per component family in FAMILIES (`Any`, None until set: the component's
    own Config dataclass types it), before its own fields. Apply it under @dataclass."""
    own = cls.__dict__.get("__annotations__", {})
    cls.__annotations__ = {**{name: Any for name in FAMILIES if name not in own}, **own}
    for name in FAMILIES:
        if name not in cls.__dict__:
            setattr(cls, name, None)
    return cls


@dataclass
@family_fields
class Schema(EngineConfig):
    """The primary config's schema (stored in the ConfigStore as `nvllm_schema`, first in
    conf/config.yaml's defaults list): Hydra checks every key's type when it composes, so
    `max_num_seqs=abc` or `compile=maybe` is refused naming the key. A field per family (FAMILIES),
    typed by its components' own Config dataclasses, which `setup()` stores beside it."""
    # each family's default option (`scheduler: fcfs`, ...), composed after the values here
    defaults: list = field(default_factory=lambda: ["_self_", *({name: f.default} for name, f in FAMILIES.items())])
    # per-request sampling defaults for workloads that do not set their own
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # print each answer (chat and file workloads)
    print_outputs: bool = True
    # serving metrics in metrics.json: percentiles, per-request arrays
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # latency bounds for request_goodput
    slo: SLOConfig = field(default_factory=SLOConfig)
    # python -m nvllm.serve: where it listens
    serve: ServeConfig = field(default_factory=ServeConfig)
    # repetition index: sweep repeat=0,1,2 for medians and spreads (changes nothing else)
    repeat: int = 0
