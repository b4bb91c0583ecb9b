"""fused_step: a Llama-family forward pass as one C call on a CPU (cpu_step.c), in place of the
model's ~1,000 torch operations a step. Decode steps run as one call; a prefill runs as calls of at
most CHUNK tokens (its rows are tokens, which read each other's K/V through the cache), unless its
context is long (`runs`). It reads the model's norms, biases and KV cache in place, its matmul
weights from packed copies (made once here), and returns the logits of the sampled rows. The
measurements behind it are in experiments/results/2026-11-29-cpu-2core-epyc/."""
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
    fn = load_library(SOURCE, "fused_step").nvllm_llama_step
    fn.argtypes = [ctypes.POINTER(_Model), _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr,
                   ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


PANEL = 16  # cpu_step.c's PANEL
CHUNK = 1024  # most rows (tokens) in one call: their activations stay in cache
# Longest context of a prefill the C step takes: each row attends over its whole context from the
# cache, so long prompts cost more here than in SDPA. Measured on the 2-core EPYC: cpu-bench's
# prefill (prompts <= 256 tokens) 23.9 s torch, 21.7 s here; one 4000-token prompt 17.1 s torch,
# 29.7 s here.
MAX_PREFILL_CONTEXT = 512


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


class FusedStep:
    """Built for one model and its allocated KV cache (rebuild if the cache is reallocated)."""

    @staticmethod
    def check() -> None:
        """Raise ConfigError naming the fix unless the C step compiles here."""
        kernel()

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

    def runs(self, meta: AttentionMetadata) -> bool:
        """Whether this step is faster here than through the torch modules."""
        return meta.is_decode or max(meta.context_lens_host) <= MAX_PREFILL_CONTEXT

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Logits at the last token of each sequence, as ModelRunner.forward returns them."""
        n = input_ids.shape[0]
        last = meta.cu_seqlens_q[1:].long() - 1
        if meta.is_decode:
            tables, context_lens = meta.block_tables, meta.context_lens
        else:  # a row per token: its sequence's block table, and the tokens up to it as context
            per_row = torch.tensor(meta.query_lens)
            tables = meta.block_tables.repeat_interleave(per_row, dim=0)
            context_lens = (positions + 1).to(torch.int32)
        logits = torch.empty(len(meta.query_lens), self.vocab, dtype=torch.float32)
        work = torch.empty(min(n, CHUNK) * self.work_per_seq, dtype=torch.float32)
        for start in range(0, n, CHUNK):
            end = min(start + CHUNK, n)
            sampled = ((last >= start) & (last < end)).nonzero().flatten()
            rows = last[sampled] - start
            out = logits[sampled[0]:sampled[-1] + 1] if len(sampled) else logits[:0]
            status = self.fn(ctypes.byref(self.model), input_ids[start:].data_ptr(), positions[start:].data_ptr(),
                             meta.slot_mapping[start:].data_ptr(), tables[start:].data_ptr(), tables.shape[1],
                             context_lens[start:].data_ptr(), end - start, rows.data_ptr(), len(rows),
                             work.data_ptr(), out.data_ptr(), torch.get_num_threads())
            if status != 0:
                raise MemoryError("fused_step: the step could not allocate its attention scores")
        return logits
