"""The typed configuration an engine is built from: `Config.from_cfg`, the one conversion from the
composed Hydra config (each family's node as its component's own Config dataclass, `typed_config`);
`Config.resolve`, which replaces every `auto` once the checkpoint is known; and the edge's two steps,
`read_checkpoint` (config.json and tokenizer, read once) and `prepare` (the `Resolved` run the engine
is built from). Past this point no code sees a DictConfig."""
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf, ValidationError

from nvllm import registry
from nvllm.attention.select import select_backend
from nvllm.auto import AUTO, choose
from nvllm.config.schema import EngineConfig, family_fields
from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget, standalone_executor
from nvllm.models.weights import load_hf_config, load_tokenizer, resolve_model_path

# max_model_len=null (auto): this, or the model's max_position_embeddings where smaller
DEFAULT_MAX_MODEL_LEN = 4096


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


@dataclass
@family_fields
class Config(EngineConfig):
    """What an engine is built from, typed: the switches and one field per component family
    (registry.FAMILIES), holding that component's own Config (workload: what nvllm.run sends, which
    an engine does not read; speculative None: none). `from_cfg` is the one conversion from the
    composed Hydra config; `resolve` replaces every `auto` once the checkpoint is known."""
    # what attention=auto and forward=auto chose and why (None: named)
    attention_choice: str | None = None
    forward_choice: str | None = None

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "Config":
        switches = {f.name: OmegaConf.to_object(cfg[f.name]) if isinstance(cfg[f.name], DictConfig) else cfg[f.name]
                    for f in fields(EngineConfig) if f.name in cfg}
        components = {name: AUTO if family.auto and cfg[name].name == AUTO  # resolve() chooses
                      else typed_config(name, cfg[name]) for name, family in registry.FAMILIES.items()}
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
                               quantization.name, self.moe.expert_parallel)
        quantizer.check(quantization, hf_config, target)
        forward, forward_choice = self._forward(target, quantization)
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

    def _forward(self, target: ForwardTarget, quantization=None) -> tuple[object, str | None]:
        """The forward strategy's Config, its autos filled in, and what forward=auto chose and why
        (None: named). cudagraph=true asks for forward=cudagraph; cudagraph=false rules it out; a
        weight format (`quantization`: its Config, where known) rules out the strategies that cannot run it."""
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
                                  lambda cls: (quantizer.check_forward(cls.name, quantization), cls.check(target)), where,
                                  {"cudagraph": "cudagraph=false rules it out"} if self.cudagraph is False else None)
        cls = registry.get("forward", name)
        config = self.forward if not isinstance(self.forward, str) and self.forward.name == name \
            else typed_config("forward", {"name": name})
        if choice is None:
            try:
                quantizer.check_forward(name, quantization)
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


def models_note(names: list[str] | None = None) -> str:
    """Each registered architecture (or those in `names`) with the model_types it runs and, for a
    plugin's, the package that registered it."""
    parts = []
    for name in names or registry.names("model"):
        origin = registry.origin("model", name)
        parts.append(f"{name} (model_type {', '.join(registry.get('model', name).hf_model_types) or 'none'}"
                     + ("" if registry.is_builtin(origin) else f"; plugin {origin.split(' ')[0]}") + ")")
    return "; ".join(parts)


@dataclass(frozen=True)
class Checkpoint:
    """What the edge reads from the model directory, once."""
    path: str
    hf_config: Any  # its config.json, as transformers reads it
    tokenizer: Any  # None: the model ships none, or forward=simulated (which loads no weights either)


def read_checkpoint(config: Config) -> Checkpoint:
    """Find the checkpoint `config.model` names and read its config.json and tokenizer."""
    computes = standalone_executor(config.forward) is None  # forward=simulated: no weights, no tokenizer
    path = resolve_model_path(config.model, weights=computes)
    hf_config = load_hf_config(path)  # a damaged config.json is one line naming it
    return Checkpoint(path, hf_config, load_tokenizer(path, hf_config) if computes else None)


@dataclass(frozen=True)
class Resolved:
    """A run as it will happen, decided once at the edge (`python -m nvllm.run`, `nvllm.serve`,
    `LLM(...)`) and passed to the engine, which reads nothing of the checkpoint again."""
    config: Config  # every `auto` decided, every switch checked against the checkpoint and the device
    checkpoint: Checkpoint


def prepare(config: Config, checkpoint: Checkpoint | None = None) -> Resolved:
    """`config` resolved against its checkpoint: `checkpoint` where the edge has read it already
    (nvllm.run builds the workload's requests first), else read here."""
    checkpoint = checkpoint or read_checkpoint(config)
    return Resolved(config.resolve(checkpoint.hf_config), checkpoint)
