"""`attention=auto` and the early check of an explicit choice: both ask the backends themselves.

auto takes, among the registered backends that rank this device type in their `auto_rank`, the
best-ranked one whose `check(device, dtype, block_size)` passes (nvllm/auto.py): on CUDA
flash_attn (when importable and the blocks allow it), else triton, else sdpa; on a CPU the `cpu`
C kernel (when it compiles; float32 attention and KV cache for any model dtype), else sdpa.
Falling back to sdpa prints a one-line notice saying why (a warning in the log)."""
import logging

import torch

from nvllm import registry
from nvllm.auto import AUTO, choose


def select_backend(cfg, device: torch.device, dtype: torch.dtype, block_size: int) -> tuple[object, str | None]:
    """(the backend's typed Config, what auto chose and why, or None for an explicit choice).
    An explicit choice that cannot run here raises its own check's message now, before the
    model is loaded."""
    name = cfg if isinstance(cfg, str) else getattr(cfg, "name", None) or cfg["name"]
    if name != AUTO:
        config = registry.make_config("attention", cfg)
        registry.get("attention", config.name).check(device, dtype, block_size)
        return config, None
    where = f"{device.type}, {str(dtype).removeprefix('torch.')}, kv_cache.block_size={block_size}"
    name, note = choose("attention", device.type, lambda cls: cls.check(device, dtype, block_size), where)
    if name == "sdpa" and "passed over" in note:
        logging.getLogger(__name__).warning(f"nvllm: {note}")
    return registry.make_config("attention", name), note
