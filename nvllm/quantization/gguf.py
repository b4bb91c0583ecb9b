"""quantization=gguf: the linear layers keep a GGUF file's own blocks, moved into the shared layout
(nvllm/models/layers/packed.py) without dequantizing: Q8_0 as int8, Q4_1 as int4, Q4_0 as int4 with min = -8 * d,
Q4_K as int4 with float32 scales and minimums. Q4_K's super-block of 256 (float16 d and dmin, a 6-bit
scale sc and minimum m per sub-block of 32) stands for w = d * sc * q - dmin * m; d * sc has up to 17
significant bits, which float16 cannot hold, so each sub-block's d * sc and -dmin * m are kept as the
float32 gguf's dequantizer computes (exact), and its quants as int4's nibbles: 6 bits a weight (16
bytes of quants and 8 of scale and minimum per 32) where the file takes 4.5, for weights bit for bit
the file's.
The embedding table (`token_embd`) and the LM head (`output`, or tied, the table) keep the file's
blocks too where it stores them as Q8_0, as llama.cpp's quantized files do (F16, F32 or another
type: they come from the safetensors, in `dtype`). Everything else (norms) comes from the model
directory's safetensors; for the embedded SmolLM2 that directory is its GGUF dequantized by
transformers, so the model computes exactly what the file describes. Llama GGUF files only
(llama.cpp stores q and k rows in its rotary order: they are put back in Hugging Face's order, a
permutation of whole rows)."""
from dataclasses import dataclass, replace
from glob import glob
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nvllm.errors import ConfigError
from nvllm.hookspecs import hookimpl
from nvllm.models.layers.packed import GROUP, pack_nibbles
from nvllm.quantization.base import QuantizationMethod, check_activations, linear_layers, pack_embeddings

# block type -> (the layout it maps into, bytes it is held in per 32 weights: quants, scales and minimums)
SUPPORTED = {"Q8_0": ("int8", 34), "Q4_0": ("int4", 20), "Q4_1": ("int4", 20), "Q4_K": ("int4, float32 scales", 24)}
SUPER_BLOCK = 256  # Q4_K's weights along k a block
# nvllm's linear layers (name suffix) and the GGUF tensors of one block each is made of, with their shard id
MODULES = {"self_attn.qkv_proj": (("attn_q", "q"), ("attn_k", "k"), ("attn_v", "v")),
           "self_attn.o_proj": (("attn_output", None),),
           "mlp.gate_up_proj": (("ffn_gate", 0), ("ffn_up", 1)),
           "mlp.down_proj": (("ffn_down", None),)}
# the embedding table and the LM head (module name's last part) -> their GGUF tensors, kept where Q8_0
EMBEDDINGS = {"embed_tokens": "token_embd.weight", "lm_head": "output.weight"}


def embedding_tensors(file: str) -> list:
    """The file's embedding table and LM head tensors (the head only where untied), as gguf reads them."""
    return [t for t in _reader(file).tensors if t.name in EMBEDDINGS.values()]


def _reader(file: str):
    from gguf import GGUFReader

    try:
        return GGUFReader(file)
    except Exception as e:
        raise ConfigError(f"quantization.file={file} is not a readable GGUF file ({type(e).__name__}: {e})") from None


def linear_tensors(file: str) -> list:
    """The file's tensors that hold the linear layers (blk.N.attn_q, ..., ffn_down), as gguf reads them."""
    kinds = {kind for parts in MODULES.values() for kind, _ in parts}
    return [t for t in _reader(file).tensors if t.name.startswith("blk.") and t.name.split(".")[2] in kinds]


def _expected_shapes(hf_config) -> dict[str, tuple[int, int]]:
    """GGUF tensor kind -> (N, K) as the checkpoint's config.json describes the model."""
    heads, kv_heads, hidden = hf_config.num_attention_heads, hf_config.num_key_value_heads, hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    inter = hf_config.intermediate_size
    return {"attn_q": (heads * head_dim, hidden), "attn_k": (kv_heads * head_dim, hidden),
            "attn_v": (kv_heads * head_dim, hidden), "attn_output": (hidden, heads * head_dim),
            "ffn_gate": (inter, hidden), "ffn_up": (inter, hidden), "ffn_down": (hidden, inter)}


def blocks(data: np.ndarray, block_type: str, name: str) -> dict[str, torch.Tensor]:
    """A GGUF tensor's bytes ([N, bytes per row]) of a supported block type as the shared layout's
    tensors: bytes moved, nothing dequantized (Q4_K: its scales multiplied out, exactly)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = GGML_QUANT_SIZES[GGMLQuantizationType[block_type]][1]
    raw = torch.from_numpy(np.array(data, dtype=np.uint8))
    n = raw.shape[0]
    raw = raw.view(n, -1, size)
    if block_type == "Q4_K":
        return _q4_k(raw)

    def half(start):
        return raw[..., start:start + 2].contiguous().view(torch.float16).squeeze(-1)

    if block_type == "Q8_0":
        return {"qweight": raw[..., 2:].contiguous().view(torch.int8).reshape(n, -1), "scales": half(0)}
    if block_type == "Q4_1":
        return {"qweight": raw[..., 4:].reshape(n, -1).contiguous(), "scales": half(0), "mins": half(2)}
    d = half(0)  # Q4_0: (q - 8) * d = q * d + (-8 * d); -8 * d is exact in float16 unless it overflows
    mins = (d.float() * -8).half()
    if not torch.isfinite(mins).all():
        raise ValueError(f"{name}: a Q4_0 scale is too large for min = -8 * d in float16")
    return {"qweight": raw[..., 2:].reshape(n, -1).contiguous(), "scales": d, "mins": mins}


def _q4_k(raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Q4_K super-blocks ([N, K // 256, 144] bytes: d, dmin, 12 bytes of 6-bit scales and minimums,
    128 of quants) as int4 with float32 scales: sub-block s's scale d * sc[s] and minimum
    -(dmin * m[s]), computed in float32 as gguf's dequantizer does (exact), so q * scale + min is its
    d * sc * q - dmin * m."""
    n, supers = raw.shape[:2]
    d, dmin = (raw[..., i:i + 2].contiguous().view(torch.float16).float() for i in (0, 2))
    # llama.cpp's get_scale_min_k4 packing: sub-blocks 0-3's sc and m in the low 6 bits of bytes 4-7
    # and 8-11, sub-blocks 4-7's low 4 bits in bytes 12-15 and their top 2 in the top bits of 4-11
    sc_bytes, m_bytes, low_bits = raw[..., 4:8], raw[..., 8:12], raw[..., 12:16]
    sc = torch.cat([sc_bytes & 63, (low_bits & 15) | ((sc_bytes >> 2) & 48)], dim=-1).float()
    m = torch.cat([m_bytes & 63, (low_bits >> 4) | ((m_bytes >> 2) & 48)], dim=-1).float()
    # each 32 bytes of quants: sub-block 2j's 32 weights in the low nibbles, 2j + 1's in the high ones
    qs = raw[..., 16:].reshape(n, supers, 4, 1, 32)
    q = torch.cat([qs & 15, qs >> 4], dim=3).reshape(n, supers * 8, 32)
    return {"qweight": pack_nibbles(q).reshape(n, -1), "scales": (d * sc).reshape(n, -1),
            "mins": -(dmin * m).reshape(n, -1)}


def unpermute_rotary(t: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary row order (adjacent pairs) back to Hugging Face's (halves) — the inverse
    of convert_hf_to_gguf.py's permute, on whole rows."""
    return t.reshape(heads, t.shape[0] // heads // 2, 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


class GGUF(QuantizationMethod):
    """The linear layers keep a GGUF file's Q8_0, Q4_0, Q4_1 or Q4_K blocks, the embedding and LM head its
    Q8_0 ones (default: the embedded model's Q4_1 file)."""

    name = "gguf"

    @dataclass
    class Config:
        name: str = "gguf"
        # the GGUF file whose blocks the linear layers keep; null: the one *.gguf in model.path, or
        # for the embedded SmolLM2 the Q4_1 file it is converted from
        file: Optional[str] = None
        activations: str = "float"  # float (exact), or int8 (fused_cpu: llama.cpp's arithmetic; base.py ACTIVATIONS)

        __post_init__ = check_activations

    @classmethod
    def resolve(cls, config, model_config):
        from nvllm.models.weights import cache_root, smollm2_gguf

        if config.file:
            return replace(config, file=str(Path(config.file).expanduser()))
        path = getattr(model_config, "path", None)
        embedded = cache_root() / "smollm2-135m-instruct"  # (its directory may hold f16/f32 files the bench wrote)
        if (not path and getattr(model_config, "embedded", None) == "smollm2") or \
                (path and Path(path).expanduser().resolve() == embedded.resolve()):
            return replace(config, file=str(smollm2_gguf()))
        if path:
            found = sorted(glob(str(Path(path).expanduser() / "*.gguf")))
            if len(found) != 1:
                raise ConfigError(f"quantization=gguf needs quantization.file=/path/to/model.gguf: model.path={path} "
                                  f"holds {len(found)} *.gguf files" + (f" ({', '.join(found)})" if found else ""))
            return replace(config, file=found[0])
        raise ConfigError("quantization=gguf needs quantization.file=/path/to/model.gguf (the blocks of the linear "
                          "layers come from it, the rest from model.path)")

    @classmethod
    def check(cls, config, hf_config, target) -> None:
        if getattr(target.model, "expert_weights_mapping", None):
            raise ConfigError(f"quantization=gguf reads a llama GGUF file's dense linear layers, and "
                              f"model={target.model.name} keeps its MLP in experts, whose GGUF tensors it does not "
                              f"read; use quantization=int8 or int4 (which pack the experts too) on the float "
                              f"checkpoint")
        super().check(config, hf_config, target)
        if "llama" not in target.model.hf_model_types:
            raise ConfigError(f"quantization=gguf reads llama GGUF files, and model={target.model.name} runs "
                              f"{', '.join(target.model.hf_model_types)} checkpoints; use quantization=int8 or int4")
        if not Path(config.file).is_file():
            raise ConfigError(f"quantization.file={config.file} does not exist")
        reader = _reader(config.file)
        arch = reader.fields.get("general.architecture")
        arch = arch.contents() if arch is not None else None
        if arch != "llama":
            raise ConfigError(f"quantization.file={config.file} holds a {arch!r} model; quantization=gguf reads "
                              f"llama GGUF files (Llama, SmolLM2). Use quantization=int8 or int4 on the float checkpoint")
        tensors = {t.name: t for t in reader.tensors}
        shapes = _expected_shapes(hf_config)
        for i in range(hf_config.num_hidden_layers):
            for module, parts in MODULES.items():
                layouts = {}
                for kind, _ in parts:
                    name = f"blk.{i}.{kind}.weight"
                    t = tensors.get(name)
                    if t is None:
                        raise ConfigError(f"quantization.file={config.file} has no tensor {name}: it does not hold "
                                          f"the model at model.path (its config.json has {hf_config.num_hidden_layers} "
                                          f"layers)")
                    block_type = t.tensor_type.name
                    if block_type not in SUPPORTED:
                        raise ConfigError(f"quantization.file={config.file}: tensor {name} is stored as {block_type}, "
                                          f"which quantization=gguf does not read; it reads "
                                          f"{', '.join(SUPPORTED)}. Use a file quantized to one of those (llama.cpp's "
                                          f"llama-quantize ... Q8_0), or quantization=int8 or int4 on the float checkpoint")
                    n, k = shapes[kind]
                    if block_type == "Q4_K" and k % SUPER_BLOCK:
                        raise ConfigError(f"quantization.file={config.file}: tensor {name} is stored as Q4_K, "
                                          f"whose blocks are {SUPER_BLOCK} weights along k, and the model at "
                                          f"model.path needs it of shape (n={n}, k={k}), k not a multiple of "
                                          f"{SUPER_BLOCK}; use a file that stores it in another type (llama.cpp's "
                                          f"llama-quantize falls back to one), or quantization=int4")
                    if [int(x) for x in t.shape] != [k, n]:
                        raise ConfigError(f"quantization.file={config.file}: tensor {name} has shape (n={int(t.shape[1])}, "
                                          f"k={int(t.shape[0])}) and the model at model.path needs (n={n}, k={k}): the "
                                          f"file holds another model")
                    layouts[name] = SUPPORTED[block_type][0]
                if len(set(layouts.values())) > 1:
                    raise ConfigError(f"quantization.file={config.file}: {', '.join(f'{n} ({v})' for n, v in layouts.items())} "
                                      f"make one fused linear layer ({module}) and nvllm keeps one layout per layer; "
                                      f"use a file with one block type for them")
        vocab, hidden = hf_config.vocab_size, hf_config.hidden_size
        for t in embedding_tensors(config.file):  # kept where Q8_0: its rows must be the model's
            if t.tensor_type.name == "Q8_0" and [int(x) for x in t.shape] != [hidden, vocab]:
                raise ConfigError(f"quantization.file={config.file}: tensor {t.name} has shape (vocab="
                                  f"{int(t.shape[1])}, hidden={int(t.shape[0])}) and the model at model.path needs "
                                  f"(vocab={vocab}, hidden={hidden}): the file holds another model")

    @classmethod
    def bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        """The linear layers' bytes as held (SUPPORTED) over their weights (the file's block types may
        differ by tensor)."""
        linear = [t for t in linear_tensors(config.file) if t.tensor_type.name in SUPPORTED]
        weights = sum(int(t.n_elements) for t in linear)
        return sum(int(t.n_elements) // GROUP * SUPPORTED[t.tensor_type.name][1] for t in linear) / weights

    @classmethod
    def embedding_bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        """Q8_0's where the file stores the embedding (and head) as Q8_0, else `dtype`'s."""
        tensors = embedding_tensors(config.file)
        if not tensors:
            return dtype_bytes
        q8 = SUPPORTED["Q8_0"][1] / GROUP
        return sum(int(t.n_elements) * (q8 if t.tensor_type.name == "Q8_0" else dtype_bytes) for t in tensors) / \
            sum(int(t.n_elements) for t in tensors)

    def apply(self, model, path: str) -> None:
        tensors = {t.name: t for t in _reader(self.config.file).tensors}
        for name, module in linear_layers(model):
            parts = layer = None
            for suffix, p in MODULES.items():
                if name.endswith("." + suffix) and ".layers." in name:
                    parts, layer = p, int(name.split(".layers.")[1].split(".")[0])
            if parts is None:
                raise ValueError(f"quantization=gguf: no GGUF tensor holds the linear layer {name}")
            packed = None
            for kind, shard_id in parts:
                t = tensors[f"blk.{layer}.{kind}.weight"]
                full = blocks(t.data, t.tensor_type.name, t.name)
                if kind in ("attn_q", "attn_k"):
                    full = {key: unpermute_rotary(t, t.shape[0] // module.head_dim) for key, t in full.items()}
                if packed is None:  # this rank's shard of each tensor: n and k as the float weight's
                    n, k = module.weight.shape
                    full_k = full["scales"].shape[1] * GROUP
                    packed = {key: torch.empty(n, t.shape[1] * k // full_k, dtype=t.dtype, device=module.weight.device)
                              for key, t in full.items()}
                for key, t in full.items():
                    args = (packed[key], t) if shard_id is None else (packed[key], t, shard_id)
                    module.weight_loader(*args)
            module.quantize(packed)

        def embedding(name, module):  # the file's Q8_0 rows of this rank's vocabulary shard, zero rows past it
            t = tensors.get(EMBEDDINGS.get(name.rsplit(".", 1)[-1]))
            if t is None or t.tensor_type.name != "Q8_0":
                return None
            full = blocks(t.data, "Q8_0", t.name)
            shard = {key: torch.zeros(module.shard, *f.shape[1:], dtype=f.dtype, device=module.weight.device)
                     for key, f in full.items()}
            for key, f in full.items():
                module.weight_loader(shard[key], f)
            return shard

        pack_embeddings(model, embedding)


@hookimpl
def register_quantizations(register):
    register(GGUF)
