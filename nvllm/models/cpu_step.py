"""fused_decode: a Llama-family decode step as one C call on a CPU (cpu_step.c), in place of the
model's ~1,000 torch operations. It reads the model's own parameters and KV cache in place (no
copy) and returns the logits; prefill still runs the torch modules. Measurements that motivated it
are in experiments/results/ (the CPU single-stream and batched benchmarks)."""
import ctypes
from pathlib import Path

import torch

from nvllm.attention.base import AttentionMetadata
from nvllm.attention.cpu import load_library

SOURCE = Path(__file__).with_name("cpu_step.c")
_ptr, _i64, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class _Layer(ctypes.Structure):
    _fields_ = [(name, _ptr) for name in (
        "input_norm", "qkv", "qkv_bias", "q_norm", "k_norm", "o", "o_bias",
        "post_norm", "gate_up", "gate_up_bias", "down", "down_bias", "k_cache", "v_cache")]


class _Model(ctypes.Structure):
    _fields_ = [(name, _i64) for name in (
        "hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate", "vocab", "num_layers", "block_size")] + [
        ("eps", _f32), ("scale", _f32),
        ("embed", _ptr), ("norm", _ptr), ("lm_head", _ptr), ("cos_sin", _ptr), ("layers", ctypes.POINTER(_Layer))]


def kernel():
    fn = load_library(SOURCE, "fused_decode").nvllm_llama_decode_step
    fn.argtypes = [ctypes.POINTER(_Model), _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _ptr, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


PANEL = 16  # cpu_step.c's PANEL


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> panels of 16 rows, k-major ([ceil(N/16), K, 16], zero rows past N): the layout
    cpu_step.c's `linear` streams."""
    n, k = weight.shape
    padded = torch.zeros(-(-n // PANEL) * PANEL, k, dtype=weight.dtype)
    padded[:n] = weight.detach()
    return padded.view(-1, PANEL, k).transpose(1, 2).contiguous()


def _p(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype == torch.float32 and t.device.type == "cpu"
    return t.data_ptr()


class FusedDecodeStep:
    """Built for one model and its allocated KV cache (rebuild if the cache is reallocated)."""

    def __init__(self, model, block_size: int):
        self.fn = kernel()
        decoder, first = model.model, model.model.layers[0]
        attn0 = first.self_attn
        self.packed = []  # the packed copies the step reads (kept alive here)

        def packed(weight):
            self.packed.append(pack(weight))
            return _p(self.packed[-1])

        layers = []
        for layer in decoder.layers:
            a, mlp = layer.self_attn, layer.mlp
            layers.append(_Layer(
                _p(layer.input_layernorm.weight), packed(a.qkv_proj.weight), _p(a.qkv_proj.bias),
                _p(a.q_norm.weight) if a.qk_norm else None, _p(a.k_norm.weight) if a.qk_norm else None,
                packed(a.o_proj.weight), _p(a.o_proj.bias), _p(layer.post_attention_layernorm.weight),
                packed(mlp.gate_up_proj.weight), _p(mlp.gate_up_proj.bias), packed(mlp.down_proj.weight),
                _p(mlp.down_proj.bias), _p(a.attn.k_cache), _p(a.attn.v_cache)))
        self.layers = (_Layer * len(layers))(*layers)
        eps = {layer.input_layernorm.eps for layer in decoder.layers}
        assert len(eps) == 1
        self.vocab = decoder.embed_tokens.vocab_size
        self.model = _Model(
            decoder.embed_tokens.weight.shape[1], attn0.num_heads, attn0.num_kv_heads, attn0.head_dim,
            first.mlp.down_proj.weight.shape[1], self.vocab, len(decoder.layers), block_size,
            eps.pop(), attn0.attn.scale, _p(decoder.embed_tokens.weight), _p(decoder.norm.weight),
            packed(model.lm_head.weight[:self.vocab]), _p(attn0.rotary_emb.cos_sin_cache), self.layers)
        m = self.model
        q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
        self.work_per_seq = 3 * m.hidden + 3 * q + 2 * kv + 3 * m.intermediate
        self.keep = model  # the pointers above live as long as the model's tensors

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n = input_ids.shape[0]
        work = torch.empty(n * self.work_per_seq, dtype=torch.float32)
        logits = torch.empty(n, self.vocab, dtype=torch.float32)
        tables = meta.block_tables
        status = self.fn(ctypes.byref(self.model), input_ids.data_ptr(), positions.data_ptr(),
                         meta.slot_mapping.data_ptr(), tables.data_ptr(), tables.shape[1],
                         meta.context_lens.data_ptr(), n, work.data_ptr(), logits.data_ptr(),
                         torch.get_num_threads())
        if status != 0:
            raise MemoryError("fused_decode: the decode step could not allocate its attention scores")
        return logits
