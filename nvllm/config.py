"""The configuration at the edge: `setup()`, which loads the plugins and stores the schema and every
component's Config in Hydra's ConfigStore; the schema Hydra composes against; the typed `Config` an
engine is built from (one conversion, `Config.from_cfg`), its `auto` resolution; and the compose
helper the Python API shares with the CLI."""
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

import torch
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf, ValidationError

from nvllm import registry
from nvllm.attention.select import select_backend
from nvllm.auto import AUTO, choose, tristate
from nvllm.forward.base import ForwardTarget, standalone_executor
from nvllm.errors import ConfigError  # noqa: F401  (re-exported: nvllm.config.ConfigError)
from nvllm.metrics import MetricsConfig, SLOConfig
from nvllm.models.base import MoEConfig
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams

# max_model_len=null (auto): this, or the model's max_position_embeddings where smaller
DEFAULT_MAX_MODEL_LEN = 4096
GROUPS = ("model", "scheduler", "kv_cache", "attention", "sampler", "forward", "speculative", "workload", "quantization")
# families whose `auto` option is decided in Config.resolve, once the checkpoint and device are known
AUTO_FAMILIES = ("attention", "forward")


@dataclass
class EngineConfig:
    """The engine-wide switches: the top level of the Hydra config (their defaults live here only)."""
    # tensor-parallel ranks
    tp: int = 1
    # torch.compile the model's hot pieces (forward=eager and cudagraph run them; auto then skips fused_cpu)
    compile: bool = False
    # decode CUDA graphs: auto (as forward=auto decides), true (= forward=cudagraph), false (never)
    cudagraph: Any = "auto"
    # auto (float32 on CPU; the checkpoint's 16-bit dtype or bfloat16 on CUDA), float32, bfloat16, float16
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
        import math
        import socket

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


@dataclass
class Schema(EngineConfig):
    """The primary config's schema (stored in the ConfigStore as `nvllm_schema`, first in
    conf/config.yaml's defaults list): Hydra checks every key's type when it composes, so
    `max_num_seqs=abc` or `compile=maybe` is refused naming the key. The groups are typed by their
    components' own Config dataclasses, which `setup()` stores beside it."""
    model: Any = None
    scheduler: Any = None
    kv_cache: Any = None
    attention: Any = None
    sampler: Any = None
    forward: Any = None
    speculative: Any = None
    workload: Any = None
    quantization: Any = None
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


_stored = False


def setup() -> None:
    """The one place the components meet Hydra, called by every entry point before Hydra composes
    (`python -m nvllm.run`, also in its task function since a launcher's job process starts without
    the module body; `python -m nvllm.serve`; `compose()`, and so `LLM(...)`). Loads the plugins,
    then stores in Hydra's ConfigStore the schema (`nvllm_schema`) and each registered component's
    Config under its family's group, so `<family>=<name>` composes, shows in `--help` and sweeps.
    Once per process: a component registered later is not stored."""
    global _stored
    load_plugins()
    if _stored:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="nvllm_schema", node=Schema, provider="nvllm")
    for family in registry.FAMILIES:
        for name in registry.names(family):
            # the stored node has `name` filled in, so the composed group says which class to build
            store.store(group=family, name=name, node=registry.get(family, name).Config(name=name),
                        provider=registry.origin(family, name))
    if not OmegaConf.has_resolver("nvllm_components"):  # `--help` lists each component with one line on it
        OmegaConf.register_new_resolver("nvllm_components", components_help)
    _stored = True


def typed_config(family: str, cfg) -> object:
    """A composed group node (DictConfig, dict or a name) as the component's own Config dataclass;
    a field of the wrong type or out of range is a ConfigError naming the key."""
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cls = registry.get(family, cfg.get("name"))
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), cfg))
    except MissingMandatoryValue as e:
        key = str(e.full_key or e.key).removeprefix(f"{family}.")
        raise ConfigError(f"{family}.{key} is required by {family}={cls.name}: add {family}.{key}=... to the command "
                          f"(or set it in Python)") from None
    except (ValidationError, AssertionError, ValueError, TypeError) as e:
        raise ConfigError(f"{family}={cls.name}: {e}".strip()) from None


def components_help() -> str:
    """Every registered component, a line each: `family=name: the first line of its docstring`
    (its class's, else its module's first sentence)."""
    import sys

    lines = []
    for family in registry.FAMILIES:
        if family in AUTO_FAMILIES:
            lines.append(f"  {family}=auto: the best-ranked {family} whose own check passes here "
                         f"(metrics.json says which and why)")
        for name in registry.names(family):
            cls = registry.get(family, name)
            doc = (cls.__doc__ or "").strip() or " ".join((sys.modules[cls.__module__].__doc__ or "").split())
            first = doc.splitlines()[0] if cls.__doc__ else re.split(r"(?<=\.)\s", doc, maxsplit=1)[0]
            if len(first) > 110:
                first = first[:107].rsplit(" ", 1)[0] + " ..."
            lines.append(f"  {family}={name}: {first}")
    return "\n".join(lines)


@dataclass
class Config(EngineConfig):
    """What an engine is built from, typed: the switches and one Config per component family.
    `from_cfg` is the one conversion from the composed Hydra config; `resolve` replaces every
    `auto` once the checkpoint is known. Past this point no code sees a DictConfig."""
    model: Any = None
    scheduler: Any = None
    kv_cache: Any = None
    attention: Any = None
    sampler: Any = None
    forward: Any = None
    # what the run sends (nvllm.run); an engine does not read it
    workload: Any = None
    # speculative decoding's drafter (None: speculative=none)
    speculative: Any = None
    # how the linear layers' weights are stored (None: quantization=none)
    quantization: Any = None
    # what attention=auto and forward=auto chose and why (None: named)
    attention_choice: str | None = None
    forward_choice: str | None = None

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "Config":
        switches = {f.name: OmegaConf.to_object(cfg[f.name]) if isinstance(cfg[f.name], DictConfig) else cfg[f.name]
                    for f in fields(EngineConfig) if f.name in cfg}
        components = {family: AUTO if cfg[family].name == AUTO and family in AUTO_FAMILIES  # resolve() chooses
                      else typed_config(family, cfg[family]) for family in registry.FAMILIES}
        return cls(**switches, **components)

    def resolve(self, hf_config) -> "Config":
        """The configuration that will really run: every `auto` replaced, every switch that cannot
        take effect here (or with this checkpoint) refused."""
        arch = registry.get("model", self.model.name)
        if hf_config.model_type not in arch.hf_model_types:
            runs = [n for n in registry.names("model")
                    if hf_config.model_type in registry.get("model", n).hf_model_types]
            raise ConfigError(f"the checkpoint holds a {hf_config.model_type!r} model, which model={self.model.name} "
                              f"does not run (it runs {', '.join(arch.hf_model_types)}); "
                              + (f"model={runs[0]} runs it" if runs else f"no registered architecture does. The "
                                 f"models here: {models_note()}"))
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
        dtype = self.dtype
        if dtype == "auto":
            # transformers >= 4.56 names it `dtype` (reading `torch_dtype` there logs a deprecation warning)
            checkpoint_dtype = hf_config.dtype if hasattr(hf_config, "dtype") else getattr(hf_config, "torch_dtype", None)
            sixteen = checkpoint_dtype in (torch.bfloat16, torch.float16)
            dtype = "float32" if device == "cpu" else (str(checkpoint_dtype).removeprefix("torch.") if sixteen else "bfloat16")
        if device == "cuda" and self.tp > torch.cuda.device_count():
            raise ConfigError(f"tp={self.tp} needs {self.tp} GPUs; torch sees {torch.cuda.device_count()}")
        check_moe(hf_config, arch, self.tp, self.moe.expert_parallel)
        check_tp(hf_config, self.tp, arch, self.moe.expert_parallel)
        attention, attention_choice = select_backend(self.attention, torch.device(device), getattr(torch, dtype),
                                                     self.kv_cache.block_size)
        quantization = registry.make_config("quantization", self.quantization or "none")
        quantizer = registry.get("quantization", quantization.name)
        quantization = quantizer.resolve(quantization, self.model)
        target = ForwardTarget(torch.device(device), getattr(torch, dtype), self.tp, arch, attention.name, self.compile,
                               quantization.name)
        quantizer.check(quantization, hf_config, target)
        forward, forward_choice = self._forward(target)
        speculative = registry.make_config("speculative", self.speculative or "none")
        registry.get("speculative", speculative.name).check(speculative, hf_config, target)
        speculating = speculative.name != "none"
        if speculating and standalone_executor(forward) is not None:
            raise ConfigError(f"speculative={speculative.name}: forward={forward.name} computes no logits to verify "
                              f"drafts against; use speculative=none with a simulated forward pass")
        if speculating and self.async_scheduling is True:  # overlap scheduling's switch
            raise ConfigError(f"async_scheduling=true schedules a step before the last one's tokens are known, and "
                              f"speculative={speculative.name} decides at each step how many there are; use "
                              f"async_scheduling=false (or auto) with speculation, or speculative=none")
        max_model_len = min(DEFAULT_MAX_MODEL_LEN, hf_config.max_position_embeddings)
        if self.max_model_len is not None:
            if self.max_model_len > hf_config.max_position_embeddings:
                raise ConfigError(f"max_model_len={self.max_model_len} is more than this model's limit, "
                                  f"max_position_embeddings={hf_config.max_position_embeddings} (its config.json): "
                                  f"use max_model_len={hf_config.max_position_embeddings} or less, or leave it out (auto)")
            max_model_len = self.max_model_len
        max_num_batched_tokens = self.max_num_batched_tokens
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 16384 if device == "cuda" else max(4096, max_model_len)
        if max_num_batched_tokens < max_model_len and not registry.get("scheduler", self.scheduler.name).chunked_prefill:
            raise ConfigError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_model_len "
                              f"({max_model_len}): a preempted sequence is recomputed in one step "
                              f"(scheduler=chunked splits it)")
        computes = standalone_executor(forward) is None
        if self.async_scheduling and not computes:
            raise ConfigError(f"async_scheduling=true: forward={forward.name} computes no tensors, so there is no "
                              f"device work to overlap; drop async_scheduling")
        if self.async_scheduling is None:  # auto: on CUDA, where the device runs asynchronously to the host
            async_scheduling = device == "cuda" and computes and not speculating
        else:
            async_scheduling = self.async_scheduling
        return replace(self, device=device, dtype=dtype, cudagraph=forward.name == "cudagraph",
                       async_scheduling=async_scheduling,
                       max_model_len=max_model_len, max_num_batched_tokens=max_num_batched_tokens,
                       attention=attention, attention_choice=attention_choice,
                       forward=forward, forward_choice=forward_choice, speculative=speculative,
                       quantization=quantization)

    def _forward(self, target: ForwardTarget) -> tuple[object, str | None]:
        """The forward strategy's Config, its autos filled in, and what forward=auto chose and why
        (None: named). cudagraph=true asks for forward=cudagraph; cudagraph=false rules it out; a
        weight format rules out the strategies that cannot run it."""
        quantizer = registry.get("quantization", target.quantization)
        name, choice = self.forward if isinstance(self.forward, str) else self.forward.name, None
        if self.cudagraph and name not in (AUTO, "cudagraph"):
            raise ConfigError(f"cudagraph=true asks for decode CUDA graphs and forward={name} runs none; "
                              f"use forward=cudagraph (or auto), or drop cudagraph=true")
        if self.cudagraph is False and name == "cudagraph":
            raise ConfigError("forward=cudagraph and cudagraph=false contradict each other; drop one")
        asked = f"forward={name}"
        if name == AUTO and self.cudagraph:
            name, asked = "cudagraph", "cudagraph=true"  # as if named: refused with its reason where it cannot run
        if name == AUTO:
            where = (f"{target.device.type}, {str(target.dtype).removeprefix('torch.')}, tp={target.tp}, "
                     f"model={target.model.name}, attention={target.attention}"
                     + (", compile=true" if target.compile else "")
                     + (f", quantization={target.quantization}" if target.quantization != "none" else ""))
            name, choice = choose("forward", target.device.type,
                                  lambda cls: (quantizer.check_forward(cls.name), cls.check(target)), where,
                                  {"cudagraph": "cudagraph=false rules it out"} if self.cudagraph is False else None)
        cls = registry.get("forward", name)
        config = self.forward if not isinstance(self.forward, str) and self.forward.name == name \
            else typed_config("forward", {"name": name})
        if choice is None:
            try:
                quantizer.check_forward(name)
                cls.check(target)
            except ConfigError as e:
                raise ConfigError(f"{asked} cannot run here: {e}") from None
        return cls.resolve(config, target), choice


def check_tp(hf_config, tp: int, arch=None, expert_parallel: bool = False):
    """Refuse a tp that does not divide the model's head counts and MLP widths, naming them. A
    mixture of experts (`arch.moe_keys`) splits each expert's width, or with `expert_parallel`
    places whole experts on ranks: then the experts' count is what tp divides."""
    names = ["num_attention_heads", "num_key_value_heads", "intermediate_size"]
    moe_keys = getattr(arch, "moe_keys", None)
    if moe_keys:
        experts, width = moe_keys
        names = [n for n in names if n != width] + [experts if expert_parallel else width]
    dims = {name: getattr(hf_config, name, None) for name in names}
    bad = {name: n for name, n in dims.items() if n is not None and n % tp}
    if bad:
        what = ", ".join(f"{name}={n}" for name, n in bad.items())
        fits = [t for t in range(1, 9) if all(n is None or n % t == 0 for n in dims.values())]
        how = " with moe.expert_parallel=true (whole experts per rank)" if moe_keys and expert_parallel else ""
        raise ConfigError(f"tp={tp} does not divide this model's {what}{how}; tp must divide "
                          f"{', '.join(f'{k}={v}' for k, v in dims.items() if v)} (tp in {fits} works)"
                          + (f"; or set moe.expert_parallel={str(not expert_parallel).lower()}" if moe_keys else ""))


def check_moe(hf_config, arch, tp: int, expert_parallel: bool):
    """A mixture of experts' routing and placement, refused before any weight loads: more experts
    per token than there are, or expert parallelism where it cannot take effect."""
    if arch.moe_keys is None:
        if expert_parallel:
            raise ConfigError(f"moe.expert_parallel=true places a mixture of experts' experts on ranks, and "
                              f"model={arch.name} has no experts; drop moe.expert_parallel")
        return
    key = arch.moe_keys[0]
    num_experts, top_k = getattr(hf_config, key), hf_config.num_experts_per_tok
    if num_experts and not 1 <= top_k <= num_experts:  # 0 experts: every layer dense (Qwen3-MoE allows it)
        raise ConfigError(f"the checkpoint's config.json has num_experts_per_tok={top_k} and {key}={num_experts}: "
                          f"each token is routed to between 1 and {num_experts} experts. Fix num_experts_per_tok "
                          f"in config.json (or use the config.json that came with the weights)")
    if expert_parallel and tp == 1:
        raise ConfigError("moe.expert_parallel=true places whole experts on tensor-parallel ranks, and this run has "
                          "tp=1 (one rank holds every expert either way); set tp=N (N dividing "
                          f"{key}={num_experts}) or drop moe.expert_parallel")


def compose(**overrides) -> DictConfig:
    """The Hydra config the CLI would compose, from Python values: a string for a group picks
    an option (`scheduler="fcfs"`); a dict sets fields of the group, and its `name`, if any, picks
    the option first (`model={"name": "qwen3", "path": "/models/q"}`); anything else sets a
    top-level key (`max_num_seqs=4`). `model` may also be a Hugging Face model directory or repo id
    (`"Qwen/Qwen3-0.6B"`: from the local Hugging Face cache, or downloaded where the hub is reachable)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    setup()
    model = overrides.get("model")
    if isinstance(model, str) and ("/" in model or os.path.isdir(model)):
        overrides["model"] = {"name": detect_architecture(model), "path": model}
    choices, values = [], {}
    for key, value in overrides.items():
        if key in GROUPS and isinstance(value, str):
            choices.append(f"{key}={value}")
        elif key in GROUPS and isinstance(value, dict) and "name" in value:
            choices.append(f"{key}={value['name']}")
            values[key] = value
        else:
            values[key] = value
    with initialize_config_module("nvllm.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=choices)
    try:
        return OmegaConf.merge(cfg, values)
    except Exception as e:  # an unknown key: struct mode names it
        raise ConfigError(f"bad override: {e}") from None


def detect_architecture(path: str) -> str:
    """The registered architecture that runs the model_type in `path`/config.json (`path`: a model
    directory or a Hugging Face repo id): nvllm's own where one runs it, else the one plugin's that
    does; several plugins' are refused, naming them."""
    import json
    from pathlib import Path

    from nvllm.models.weights import locate

    load_plugins()
    config_file = Path(locate(path)) / "config.json"  # a directory, or a Hugging Face repo id
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    runs = [name for name in registry.names("model") if model_type in registry.get("model", name).hf_model_types]
    # nvllm's own architecture wins: a plugin's (a subclass inherits hf_model_types) runs when named
    runs = [name for name in runs if registry.is_builtin(registry.origin("model", name))] or runs
    if len(runs) > 1:
        raise ConfigError(f"{config_file} holds a model_type {model_type!r} model, which several architectures run: "
                          f"{models_note(runs)}; name the one to use (model={{'name': '{runs[0]}', 'path': ...}} in "
                          f"Python, model={runs[0]} model.path=... on the command line)")
    if not runs:
        architectures = ", ".join(config.get("architectures") or []) or "none named"
        raise ConfigError(f"{config_file} holds a model_type {model_type!r} model (architectures: {architectures}), "
                          f"which no registered architecture runs. The models here: {models_note()}. A plugin "
                          f"package that provides it (see docs/plugins.md) is found once pip-installed. "
                          f"{registry.failed_plugins_note()}".strip())
    return runs[0]


def models_note(names: list[str] | None = None) -> str:
    """Each registered architecture (or those in `names`) with the model_types it runs and, for a
    plugin's, the package that registered it."""
    parts = []
    for name in names or registry.names("model"):
        origin = registry.origin("model", name)
        parts.append(f"{name} (model_type {', '.join(registry.get('model', name).hf_model_types) or 'none'}"
                     + ("" if registry.is_builtin(origin) else f"; plugin {origin.split(' ')[0]}") + ")")
    return "; ".join(parts)


def check_composed(cfg: DictConfig) -> None:
    """What Hydra composed and cannot catch itself, refused in one ConfigError each: an interpolation
    that does not resolve (`max_num_seqs=${oops}`, `${oc.env:UNSET}`), a group deleted (`~model`),
    a key no schema has (`+unknown=1`: Hydra lets `+` add keys to a structured config), named with the
    nearest valid key."""
    import difflib
    from dataclasses import is_dataclass

    from omegaconf.errors import InterpolationResolutionError

    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as e:
        key = str(e.full_key or e.key)
        raw = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            raw = raw.get(part) if isinstance(raw, dict) else raw
        cause = str(e.__cause__ or e).splitlines()[0].strip()
        raise ConfigError(f"{key}={raw} does not resolve ({cause}): give {key} a value, or set what it refers to "
                          f"(an environment variable with oc.env takes a default: ${{oc.env:NAME,default}})") from None
    for group in (*GROUPS, "sampling", "serve"):
        if cfg.get(group) is None:
            choose = f"choose one with {group}=<name> ({', '.join(group_options(group))}) or " if group in GROUPS else ""
            raise ConfigError(f"{group} is required and the command line deleted it (~{group}): {choose}drop ~{group}")

    def walk(node, prefix: str):
        schema = OmegaConf.get_type(node)
        known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
        for key in node.keys():
            name = f"{prefix}{key}"
            if known is not None and key not in known:
                near = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f"did you mean {prefix}{near[0]}?" if near else f"the keys here: {', '.join(sorted(known))}"
                raise ConfigError(f"{name} is not a key nvllm knows ({hint}); `python -m nvllm.run --help` lists them")
            value = node._get_node(key)
            if isinstance(value, DictConfig) and not value._is_none():
                walk(value, f"{name}.")

    walk(cfg, "")


def group_options(group: str) -> list[str]:
    """The options `group=<name>` takes: its YAML files in conf/ and its registered components."""
    from importlib.resources import files

    yaml = [f.name.removesuffix(".yaml") for f in (files("nvllm.conf") / group).iterdir() if f.name.endswith(".yaml")]
    return sorted({*yaml, *(registry.names(group) if group in registry.FAMILIES else ())})
