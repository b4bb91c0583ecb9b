"""Engine-wide switches (the top level of the Hydra config), their `auto` resolution, and the
compose helper the Python API shares with the CLI."""
import os
from dataclasses import asdict, dataclass, fields

import torch
from omegaconf import DictConfig, OmegaConf

from nvllm.errors import ConfigError  # noqa: F401  (re-exported: nvllm.config.ConfigError)

GROUPS = ("model", "scheduler", "kv_cache", "attention", "sampler", "workload")


@dataclass
class EngineConfig:
    # tensor-parallel ranks
    tp: int = 1
    # torch.compile the model
    compile: bool = False
    # decode CUDA graphs: auto (on for CUDA), true, false
    cudagraph: str = "auto"
    # CPU linears through oneDNN with weights prepacked once: auto (on for float32 on the CPU), true, false
    onednn: str = "auto"
    # auto (float32 on CPU; the checkpoint's 16-bit dtype or bfloat16 on CUDA), float32, bfloat16, float16
    dtype: str = "auto"
    # auto (cuda when present), cpu, cuda
    device: str = "auto"
    # most sequences in one step
    max_num_seqs: int = 512
    # most tokens in one step
    max_num_batched_tokens: int = 16384
    # longest sequence (prompt + output); capped by the model's max_position_embeddings
    max_model_len: int = 4096
    # global seed for unseeded sampling
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "EngineConfig":
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

    def __post_init__(self):
        for name in ("cudagraph", "onednn"):
            value = str(getattr(self, name)).lower()
            if value not in ("auto", "true", "false"):
                raise ConfigError(f"{name} must be auto, true or false, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("tp", "max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def resolve(self, checkpoint_dtype: torch.dtype | None = None) -> "EngineConfig":
        """Return the configuration that will really run: every `auto` replaced, every switch
        that cannot take effect here refused."""
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
        dtype = self.dtype
        if dtype == "auto":
            sixteen = checkpoint_dtype in (torch.bfloat16, torch.float16)
            dtype = "float32" if device == "cpu" else (str(checkpoint_dtype).removeprefix("torch.") if sixteen else "bfloat16")
        cudagraph = self.cudagraph
        if cudagraph == "true" and device != "cuda":
            raise ConfigError("cudagraph=true needs a CUDA device and this run is on the CPU; use cudagraph=false or auto")
        if cudagraph == "auto":
            cudagraph = "true" if device == "cuda" else "false"
        onednn = self.onednn
        if onednn == "true" and (device != "cpu" or dtype != "float32" or not torch.backends.mkldnn.is_available()):
            raise ConfigError(f"onednn=true packs float32 weights for CPU matmuls and this run is {dtype} on {device}"
                              f"{'' if torch.backends.mkldnn.is_available() else ' with a torch built without oneDNN'}; "
                              f"use onednn=false or auto")
        if onednn == "auto":
            onednn = str(device == "cpu" and dtype == "float32" and torch.backends.mkldnn.is_available()).lower()
        if device == "cuda" and self.tp > torch.cuda.device_count():
            raise ConfigError(f"tp={self.tp} needs {self.tp} GPUs; torch sees {torch.cuda.device_count()}")
        return EngineConfig(**{**asdict(self), "device": device, "dtype": dtype, "cudagraph": cudagraph,
                                            "onednn": onednn})

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def check_tp(hf_config, tp: int):
    """Refuse a tp that does not divide the model's head counts and MLP width, naming them."""
    dims = {name: getattr(hf_config, name, None) for name in
            ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
    bad = {name: n for name, n in dims.items() if n is not None and n % tp}
    if bad:
        what = ", ".join(f"{name}={n}" for name, n in bad.items())
        fits = [t for t in range(1, 9) if all(n is None or n % t == 0 for n in dims.values())]
        raise ConfigError(f"tp={tp} does not divide this model's {what}; tp must divide "
                          f"{', '.join(f'{k}={v}' for k, v in dims.items() if v)} (tp in {fits} works)")


def compose(**overrides) -> DictConfig:
    """The Hydra config the CLI would compose, from Python values: a string for a group picks
    an option (`scheduler="fcfs"`); a dict sets fields of the group, and its `name`, if any, picks
    the option first (`model={"name": "qwen3", "path": "/models/q"}`); anything else sets a
    top-level key (`max_num_seqs=4`). `model` may also be a Hugging Face model directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from nvllm.plugins import load_plugins

    load_plugins()
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
    """The registered architecture that runs the model_type in `path`/config.json."""
    import json
    from pathlib import Path

    from nvllm import registry

    config_file = Path(path).expanduser() / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path} has no config.json; a model directory is in Hugging Face format")
    model_type = json.loads(config_file.read_text()).get("model_type")
    for name in registry.names("model"):
        if model_type in registry.get("model", name).hf_model_types:
            return name
    raise ConfigError(f"no registered architecture runs model_type {model_type!r} (from {config_file}); "
                      f"registered: {', '.join(registry.names('model'))}")
