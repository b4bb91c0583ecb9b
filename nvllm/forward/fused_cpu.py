"""forward=fused_cpu: a Llama-family step's whole forward pass as one C call on a CPU
(nvllm/kernels/cpu_step.c), float32 activations and sums, in place of the torch modules' many
small operations a step. Decode steps run as one call, and so do speculative verify steps (a few rows per sequence,
each reading its context from the cache like a decode row) and early-exit draft steps (a copy of
the C model cut after its first layers); a prefill runs as calls of at most CHUNK token rows (its
rows read each other's K/V through the cache) unless its context is longer than
`forward.max_prefill_context`, where the torch modules (forward=eager, SDPA) are faster. It reads
the model's norms, biases and KV cache in place, and its matmul weights and embedding table as
panels packed once, which the modules hold in their float weights' place (one copy resident; the
torch modules unpack a layer's where they run), and returns the logits of the sampled rows only.
Its attention is attention=cpu's kernel (nvllm/kernels/paged_attention.h), so it runs with
attention=cpu (whose KV cache is float32). A
mixture of experts' layer (a FusedMoE: qwen3_moe, the Mixtral plugin) runs nvllm/kernels/moe_step.h:
each row routed in C, and only the experts the step's rows chose run, each over its rows.

dtype=bfloat16 or float16 keeps the packed matmul weights (the LM head's too) and the embedding
table in 16 bits, half the bytes a step streams, and widens them to float32 in registers: the step
computes what the float32 step computes on the 16-bit-rounded weights. Where the compiled step
unpacks them in vector code (AVX-512 VBMI: codes_bf16), bfloat16 panels are held in about 12 bits a
weight without losing a bit (code12): the same weights and logits, a quarter fewer bytes a step.
Such a run takes every prefill in C (the torch modules would compute in 16 bits), whatever
max_prefill_context says.

A packed format (quantization=int8, int4, gguf) is read in place: each linear layer's quantized
rows (nvllm/models/layers/packed.py), dequantized in registers by nvllm/kernels/quantized.h, so the
step computes x times the dequantized float32 weights; the embedding table and the LM head are the
model's int8 rows too (tied: one table), a looked-up row dequantized, the head multiplied as an int8
linear layer. quantization.activations=int8 multiplies the linear layers' and the LM head's packed
weights by activations rounded to int8 a block of 32 at a time (llama.cpp's arithmetic: a numerics
change, asked for by name); a mixture of experts' router and experts keep float activations. Such a
run, too, takes every prefill in C."""
import contextlib
import ctypes
import functools
import threading
from dataclasses import dataclass

import torch

from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget, logits_rows
from nvllm.forward.eager import EagerForward
from nvllm.hookspecs import hookimpl
from nvllm.kernels import hugepages, load_library
from nvllm.models.base import fused_layout
from nvllm.models.layers.linear import PackedWeight
from nvllm.models.layers.moe import FusedMoE

_ptr, _i64, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


class _Weight(ctypes.Structure):
    _fields_ = [("data", _ptr), ("scales", _ptr), ("mins", _ptr), ("format", _i64), ("escapes", _ptr),
                ("escape_start", _ptr)]


MATMULS = ("qkv", "o", "gate_up", "down")  # a layer's Weight fields


class _MoeLayer(ctypes.Structure):
    _fields_ = [(name, _i64) for name in ("num_experts", "top_k", "intermediate", "renormalize")] + [
        ("gate", _Weight), ("w13", _Weight), ("w2", _Weight), ("w13_stride", _i64), ("w2_stride", _i64),
        ("counters", _ptr)]


class _Layer(ctypes.Structure):
    _fields_ = [(name, _Weight if name in MATMULS else _ptr) for name in (
        "input_norm", "qkv", "qkv_bias", "q_norm", "k_norm", "o", "o_bias",
        "post_norm", "gate_up", "gate_up_bias", "down", "down_bias", "k_cache", "v_cache")] + [
        ("moe", ctypes.POINTER(_MoeLayer))]


class _Model(ctypes.Structure):
    _fields_ = [(name, _i64) for name in (
        "hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate", "vocab", "num_layers", "block_size",
        "weights")] + [
        ("eps", _f32), ("scale", _f32),
        ("embed", _Weight), ("norm", _ptr), ("lm_head", _Weight), ("cos_sin", _ptr), ("layers", ctypes.POINTER(_Layer))]


@functools.cache
def kernel():
    """The compiled `nvllm_llama_step`."""
    fn = load_library("cpu_step.c", "forward=fused_cpu", "forward=eager").nvllm_llama_step
    fn.argtypes = [ctypes.POINTER(_Model), _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _i64, _ptr, _ptr,
                   ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def isa() -> str:
    """The vector code the compiled step runs: avx512, avx2 or portable."""
    fn = load_library("cpu_step.c", "forward=fused_cpu", "forward=eager").nvllm_step_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()


def codes_bf16() -> bool:
    """Whether bfloat16 panels are stored in 12 bits a weight (`code12`): where the compiled step
    unpacks them in vector code (AVX-512 with VBMI's byte permutes); elsewhere that is slower than
    reading the plain 16 bits."""
    return bool(load_library("cpu_step.c", "forward=fused_cpu", "forward=eager").nvllm_step_vector12())


def dot_row_bytes(k: int) -> int:
    """The bytes of scratch one row of int8 activations takes (quantized.h `dot_row_bytes`)."""
    fn = load_library("cpu_step.c", "forward=fused_cpu", "forward=eager").nvllm_dot_row_bytes
    fn.argtypes, fn.restype = [_i64], _i64
    return fn(k)


PANEL = 16  # cpu_step.c's PANEL
WEIGHTS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # cpu_step.c's Model.weights
INT8, INT4, INT4_F32 = 3, 4, 6  # cpu_step.c's quantized Weight.format
BF16_12 = 9  # cpu_step.c's bfloat16 panels in 12 bits a weight (code12)
DOT = {INT8: 5, INT4: 7, INT4_F32: 8}  # each with int8 activations (quantization.activations=int8)
CHUNK = 1024  # most rows (tokens) in one call: their activations stay in cache


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> panels of 16 rows, k-major ([ceil(N/16), K, 16], zero rows past N): the layout
    cpu_step.c's `linear_as` streams. bfloat16: k in pairs, each row's two weights side by side
    ([ceil(N/16), K/2, 16, 2]), so that one 32-bit lane holds both and a shift or a mask widens each."""
    n, k = weight.shape
    padded = torch.zeros(-(-n // PANEL) * PANEL, k, dtype=weight.dtype)
    padded[:n] = weight.detach()
    if weight.dtype != torch.bfloat16:
        return padded.view(-1, PANEL, k).transpose(1, 2).contiguous()
    if k % 2:
        raise ValueError(f"a bfloat16 weight packs k in pairs, and this one has k={k}; use dtype=float16 or float32")
    return padded.view(-1, PANEL, k // 2, 2).transpose(1, 2).contiguous()


def code12(panels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bfloat16 panels (`pack`'s [P, K/2, 16, 2]) in cpu_step.c's BF16_12 layout, every bit kept:
    (data: uint8 [P, panel bytes], escapes: uint8 [E + 1, 64], escape_start: int32 [P]). Each k pair's
    32 weights keep their low bytes (exponent's last bit, mantissa) and hold their high bytes (sign,
    exponent's upper 7 bits) as nibbles: the sign, and 0 for exponent bits 0 (a zero) or 1-7 over the
    pair's least nonzero one, its base: 48 bytes and a base byte for 64. A pair whose nonzero exponent
    bits span more than 7 values is stored whole in `escapes`, its base 255."""
    p, pairs = panels.shape[:2]
    bits = panels.view(torch.int16).to(torch.int32) & 0xFFFF  # [P, K/2, 16, 2]
    high = bits >> 8
    exponent = high & 0x7F
    base = torch.where(exponent > 0, exponent, 127).amin(dim=(2, 3)).clamp(min=1)
    code = torch.where(exponent > 0, exponent - base[..., None, None] + 1, 0)
    escaped = code.amax(dim=(2, 3)) > 7
    nibble = code.clamp(max=7) | (high >> 7) << 3
    lines = torch.cat([(bits & 0xFF).reshape(p, pairs, 32), nibble[..., 0] | nibble[..., 1] << 4], dim=2)
    stride = -(-pairs * 49 // 64) * 64  # cpu_step.c's panel_bytes
    data = torch.zeros(p, stride, dtype=torch.uint8)
    data[:, :pairs * 48] = lines.reshape(p, -1).to(torch.uint8)
    data[:, pairs * 48:pairs * 49] = torch.where(escaped, 255, base).to(torch.uint8)
    whole = panels.view(torch.uint8).reshape(p, pairs, 64)[escaped]
    escapes = torch.cat([whole, torch.zeros(1, 64, dtype=torch.uint8)])  # (never empty)
    counts = escaped.sum(1)
    return data, escapes, (counts.cumsum(0) - counts).to(torch.int32)


def unpack(panels: torch.Tensor, rows: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """`pack`'s inverse: the weight [rows, K] of its panels (into `out`, [panels' rows, K], if given)."""
    lanes = panels.transpose(1, 2)  # [P, 16, K], or bfloat16's [P, 16, K/2, 2]
    if out is None:
        return lanes.reshape(len(panels) * PANEL, -1)[:rows]
    out.view(lanes.shape).copy_(lanes)
    return out[:rows]


def decode12(data: torch.Tensor, escapes: torch.Tensor, k: int) -> torch.Tensor:
    """`code12`'s inverse: the bfloat16 panels ([P, K/2, 16, 2]) of its data and escapes."""
    p, pairs = data.shape[0], k // 2
    lines = data[:, :pairs * 48].reshape(p, pairs, 48).to(torch.int32)
    base = data[:, pairs * 48:pairs * 49].to(torch.int32)[..., None, None]
    nibble = torch.stack([lines[..., 32:] & 15, lines[..., 32:] >> 4], dim=-1)  # [P, K/2, 16, 2]: k, k + 1
    high = (nibble & 8) << 4 | torch.where(nibble & 7 > 0, base - 1 + (nibble & 7), 0)
    plain = torch.stack([lines[..., :32].reshape(p, pairs, 16, 2), high], dim=-1).to(torch.uint8)
    escaped = data[:, pairs * 48:pairs * 49] == 255
    plain.view(p, pairs, 64)[escaped] = escapes[:-1]
    return plain.view(torch.bfloat16).reshape(p, pairs, 16, 2)


def plain_panels(panels: torch.Tensor) -> _Weight:
    """The C step's view of `pack`'s panels (any layer's, or a stack of experts') in their dtype."""
    return _Weight(_p(panels, panels.dtype), None, None, WEIGHTS[panels.dtype])


@dataclass(eq=False)
class Panels:
    """A float weight [rows, K] as the C step reads it, held by its module in the weight's place
    (PackedWeight.hold): `pack`'s panels, or bfloat16 ones in 12 bits (`code12`'s data, escapes,
    escape_start)."""
    rows: int
    k: int
    tensors: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, weight: torch.Tensor, in_12_bits: bool) -> "Panels":
        panels = pack(weight)
        return cls(*weight.shape, code12(panels) if in_12_bits else (panels,))

    def dense(self) -> torch.Tensor:
        panels = self.tensors[0] if len(self.tensors) == 1 else decode12(*self.tensors[:2], self.k)
        buffers = getattr(_unpacked, "buffers", None)
        if buffers is None:
            return unpack(panels, self.rows)
        shape = (len(panels) * PANEL, self.k)
        key = (*shape, panels.dtype)
        if key not in buffers:
            buffers[key] = torch.empty(shape, dtype=panels.dtype)
        return unpack(panels, self.rows, buffers[key])

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The weight's rows `ids` (an embedding's lookup), the rest left packed (12 bits: unpacked)."""
        if len(self.tensors) > 1:
            return self.dense()[ids]
        panels, flat = self.tensors[0], ids.reshape(-1)
        rows = panels[flat // PANEL, :, flat % PANEL]  # [n, K] or bfloat16's [n, K/2, 2]
        return rows.reshape(*ids.shape, self.k)

    def weight(self) -> _Weight:
        """The C step's view of it."""
        if len(self.tensors) == 1:
            return plain_panels(self.tensors[0])
        data, escapes, start = self.tensors
        return _Weight(_p(data, torch.uint8), None, None, BF16_12, _p(escapes, torch.uint8), _p(start, torch.int32))


# while this thread's torch modules run a pass under forward=fused_cpu (`reusing_buffers`): a buffer
# per shape that each layer's weight is unpacked into, the layer before it done with it (fresh memory
# for each would have its pages faulted in anew: a float32 prefill 1.2x as slow)
_unpacked = threading.local()


@contextlib.contextmanager
def reusing_buffers():
    """Within it, this thread's `Panels.dense` unpacks into one buffer per shape."""
    _unpacked.buffers = {}
    try:
        yield
    finally:
        _unpacked.buffers = None


@dataclass(eq=False)
class ExpertPanels:
    """A mixture of experts' w13 or w2 ([E, N, K]) as the C step reads it, held by the FusedMoE in its
    place (FusedMoE.hold): each expert's panels (w13: its gate's, then its up's, each packed alone), stacked."""
    stack: torch.Tensor
    parts: int
    rows: int

    @classmethod
    def of(cls, weights: torch.Tensor, parts: int) -> "ExpertPanels":
        return cls(torch.stack([torch.cat([pack(part) for part in w.chunk(parts)]) for w in weights]), parts,
                   weights.shape[1])

    @property
    def tensors(self) -> tuple[torch.Tensor]:
        return (self.stack,)

    def expert(self, local: int) -> torch.Tensor:
        return torch.cat([unpack(part, self.rows // self.parts) for part in self.stack[local].chunk(self.parts)])


def decoder_mlp(layer: torch.nn.Module) -> torch.nn.Module:
    """A decoder layer's MLP: its FusedMoE, whatever the attribute's name (Qwen3-MoE's `mlp`, Mixtral's
    `block_sparse_moe`), else its dense `mlp`."""
    moe = next((m for m in layer.children() if isinstance(m, FusedMoE)), None)
    return layer.mlp if moe is None else moe


def moe_work_per_row(moe: _MoeLayer, hidden: int) -> int:
    """The floats of moe_step.h's scratch a step needs per row (its 2 x [E + 1] of expert lists counted in each)."""
    return 3 * moe.num_experts + 2 + 3 * moe.top_k + moe.top_k * (hidden + 3 * moe.intermediate)


def _p(t: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> int | None:
    if t is None:
        return None
    assert t.is_contiguous() and t.dtype == dtype and t.device.type == "cpu"
    return t.data_ptr()


class FusedCPUForward(EagerForward):
    """A Llama-family step as one C call (CPU, float32, 16-bit or packed weights, attention=cpu, tp=1);
    long float32 prefills run eagerly."""

    name = "fused_cpu"
    auto_rank = {"cpu": 0}

    @dataclass
    class Config:
        name: str = "fused_cpu"
        # longest context of a prefill the C step runs with float32 weights (each row attends over its
        # whole context from the cache, so long prompts cost more here than in SDPA); longer prefills
        # run eagerly. 16-bit weights: the C step runs every prefill (the torch modules compute in 16 bits)
        max_prefill_context: int = 512

        def __post_init__(self):
            if isinstance(self.max_prefill_context, bool) or self.max_prefill_context < 0:
                raise ConfigError(f"forward.max_prefill_context={self.max_prefill_context!r} is not allowed: "
                                  f"use an integer >= 0 (0: every prefill runs eagerly)")

    @classmethod
    def check(cls, target: ForwardTarget) -> None:
        dtype = str(target.dtype).removeprefix("torch.")
        if fused_layout(target.model) != "llama":
            why = (f"model={target.model.name} ({target.model.__qualname__}) does not declare the computation "
                   f"cpu_step.c implements (fused_step_layout = \"llama\" in its own class body: a subclass "
                   f"inherits none, since the C step would ignore what it overrides)")
        elif target.device.type != "cpu" or target.dtype not in WEIGHTS:
            why = f"it is a CPU kernel (float32, bfloat16 or float16 weights) and this run is {dtype} on {target.device.type}"
        elif target.tp != 1:
            why = f"it runs one process and this run has tp={target.tp}"
        elif target.attention != "cpu":
            why = f"it computes attention=cpu's kernel and this run chose attention={target.attention}"
        elif target.compile:
            why = "compile=true compiles the torch modules, which it does not run"
        else:
            kernel()  # raises ConfigError naming the fix where the C step does not compile
            return
        raise ConfigError(f"{why}; use forward=eager or auto")

    def __init__(self, config, runner):
        super().__init__(config, runner)
        self.fn = kernel()
        # the panels the modules hold in their float weights' place (`hold_weights`), and the float32
        # copies of 16-bit norms and biases the step reads, by what they copy (kept alive here)
        self.held: list[Panels | ExpertPanels] = []
        self.packed: dict[object, torch.Tensor] = {}
        self.weights = runner.dtype  # the packed weights' and the embedding's dtype; all else float32
        self.code12 = self.weights == torch.bfloat16 and codes_bf16()  # bfloat16 panels in 12 bits (code12)
        quantization = runner.config.quantization
        # a packed format (quantization=int8, int4, gguf): the linear layers' quantized rows, read in place
        self.quantized = quantization is not None and quantization.name != "none"
        self.int8_activations = getattr(quantization, "activations", None) == "int8"
        # the C model (under None), and copies cut after their first layers (under their number)
        self.early_exits: dict[int | None, _Model] = {}
        self.moe_layers: list[_MoeLayer] = []  # the C step's view of each mixture of experts (moe_step.h)
        # a decode step's scored rows and the C step's scratch, kept from step to step (_every_row, _work)
        self.rows, self.work = torch.empty(0, dtype=torch.int64), torch.empty(0)

    def bind_kv_cache(self):
        """Hold the float weights as the step's panels (`hold_weights`), move everything the step
        streams (the model's tensors, the copies) into huge pages (nvllm/kernels/hugepages.py), then
        point the C model at them and at this cache: two passes of `_bind`, the second finding every
        copy made."""
        self.held = self.hold_weights()
        self._bind()
        hugepages.move([*self.model.parameters(), *self.model.buffers(), *self.packed.values(),
                        *(t for panels in self.held for t in panels.tensors)])
        self._bind()

    def hold_weights(self) -> list[Panels | ExpertPanels]:
        """Pack every float weight the step multiplies by (the linear layers', the embedding table's, the
        LM head's) into its panels once, and have its module hold them in the float weight's place
        (PackedWeight.hold: tied modules share them): one copy stays resident, which the torch modules
        unpack where they run (a float32 prefill longer than max_prefill_context)."""
        held: dict[object, Panels | ExpertPanels] = {}  # by the weight (a tied one once), or (MoE, name)
        for module in self.model.modules():
            if isinstance(module, PackedWeight) and module.weight is not None:
                if id(module.weight) not in held:
                    held[id(module.weight)] = Panels.of(module.weight.detach(), self.code12)
                module.hold(held[id(module.weight)])
            if isinstance(module, FusedMoE) and module.w13 is not None:
                for name, parts in (("w13", 2), ("w2", 1)):
                    held[id(module), name] = ExpertPanels.of(getattr(module, name).detach(), parts)
                    module.hold(name, held[id(module), name])
        return list(held.values())

    def _bind(self):
        """Build the C model over the held panels, the quantized rows, the norms (16-bit ones copied to
        float32 once: self.packed) and the cache."""
        self.early_exits.clear()
        model = self.model
        decoder, first = model.model, model.model.layers[0]
        attn0 = first.self_attn

        def copy(key, make) -> torch.Tensor:
            """A copy the step reads (widened, stacked), made once: the same tensor in either pass"""
            if key not in self.packed:
                self.packed[key] = make()
            return self.packed[key]

        def matmul(linear, int8_dot: bool = self.int8_activations) -> _Weight:
            """A linear layer's (or the embedding's, the LM head's) weight as the step reads it: the panels
            it holds (`hold_weights`), or the layer's own quantized rows (nvllm/models/layers/packed.py), in place."""
            if linear.qweight is None:
                return linear.held.weight()
            if linear.mins is not None:  # int4: float16 scales, or float32 ones (GGUF Q4_K)
                fmt = INT4_F32 if linear.scales.dtype == torch.float32 else INT4
            else:
                fmt = INT8
            return _Weight(_p(linear.qweight, linear.qweight.dtype), _p(linear.scales, linear.scales.dtype),
                           _p(linear.mins, linear.scales.dtype), DOT[fmt] if int8_dot else fmt)

        def f32(t):  # norms and biases: float32, copied where the model holds them in 16 bits
            if t is None or t.dtype == torch.float32:
                return _p(t)
            return _p(copy(id(t), lambda: t.detach().float().contiguous()))

        def experts(moe: FusedMoE) -> _MoeLayer:
            """The router like any linear layer (quantized: float activations, whatever
            quantization.activations says), and every expert, expert after expert: packed in panels,
            or a weight format's stacked rows (moe.py `quantize`), read in place."""
            gate = matmul(moe.gate, int8_dot=False)
            if not moe.held:
                fmt = INT4 if moe.w13_mins is not None else INT8
                w13, w2 = (_Weight(_p(q, q.dtype), _p(s, torch.float16), _p(m, torch.float16), fmt)
                           for q, s, m in (moe.expert_weights("w13"), moe.expert_weights("w2")))
                strides = moe.w13_qweight[0].nbytes, moe.w2_qweight[0].nbytes
            else:  # the stacked panels it holds (`hold_weights`)
                w13, w2 = moe.held["w13"].stack, moe.held["w2"].stack
                strides = w13[0].nbytes, w2[0].nbytes
                w13, w2 = plain_panels(w13), plain_panels(w2)
            self.moe_layers.append(_MoeLayer(moe.num_experts, moe.top_k, moe.intermediate_size, moe.renormalize,
                                             gate, w13, w2, *strides, None))
            return self.moe_layers[-1]

        mlps = [decoder_mlp(layer) for layer in decoder.layers]
        dense = [mlp for mlp in mlps if not isinstance(mlp, FusedMoE)]
        layers, self.moe_layers = [], []
        for layer, mlp in zip(decoder.layers, mlps):
            a = layer.self_attn
            if isinstance(mlp, FusedMoE):
                mlp_weights, moe = (_Weight(), None, _Weight(), None), ctypes.pointer(experts(mlp))
            else:
                mlp_weights = (matmul(mlp.gate_up_proj), f32(mlp.gate_up_proj.bias), matmul(mlp.down_proj),
                               f32(mlp.down_proj.bias))
                moe = None
            layers.append(_Layer(
                f32(layer.input_layernorm.weight), matmul(a.qkv_proj), f32(a.qkv_proj.bias),
                f32(a.q_norm.weight) if a.qk_norm else None, f32(a.k_norm.weight) if a.qk_norm else None,
                matmul(a.o_proj), f32(a.o_proj.bias), f32(layer.post_attention_layernorm.weight),
                *mlp_weights, _p(a.attn.k_cache), _p(a.attn.v_cache), moe))
        self.layers = (_Layer * len(layers))(*layers)
        eps = {layer.input_layernorm.eps for layer in decoder.layers}
        assert len(eps) == 1
        embed = decoder.embed_tokens
        self.vocab = embed.vocab_size  # (tp=1: the table's and the head's rows)
        table = matmul(embed, int8_dot=False)
        self.c_model = _Model(
            decoder.norm.weight.shape[0], attn0.num_heads, attn0.num_kv_heads, attn0.head_dim,
            max((mlp.gate_up_proj.output_sizes[0] for mlp in dense), default=0), self.vocab, len(decoder.layers),
            self.runner.block_size,
            WEIGHTS[self.weights], eps.pop(), attn0.attn.scale, table,
            f32(decoder.norm.weight), matmul(model.lm_head), f32(attn0.rotary_emb.cos_sin_cache),
            self.layers)
        self.early_exits[None] = m = self.c_model
        q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
        # activations (cpu_step.c's `work`), then one room for either a row's int8 activations
        # (quantization.activations=int8) or a mixture of experts' scratch
        self.work_per_seq = 3 * m.hidden + 3 * q + 2 * kv + 3 * m.intermediate + max(
            [-(-dot_row_bytes(max(m.hidden, q, m.intermediate)) // 4),
             *(moe_work_per_row(e, m.hidden) for e in self.moe_layers)])

    def count_experts(self) -> list[torch.Tensor] | None:
        """Turn on the C step's expert counters (moe_step.h `counters`, a measurement): one int64 tensor per
        mixture-of-experts layer, [num_experts + 1], that the steps from now on add to: the rows routed
        to each expert, then the bytes of expert weights the step's matmuls read."""
        self.counters = [torch.zeros(e.num_experts + 1, dtype=torch.int64) for e in self.moe_layers]
        for e, counters in zip(self.moe_layers, self.counters):
            e.counters = counters.data_ptr()
        return self.counters

    def runs(self, meta) -> bool:
        """Whether the C step takes this step (else the torch modules do): every sequence either
        returns logits for each of its query rows (a decode, a speculative verify step: a few rows
        over the cache, each like a decode row) or has a context of at most max_prefill_context, or
        the weights are 16-bit or quantized (the torch modules would compute in 16 bits, or
        dequantize every weight on every call)."""
        if meta.is_decode or self.weights != torch.float32 or self.quantized:
            return True
        num_logits = meta.num_logits or [1] * len(meta.query_lens)
        return all(q_len == n or ctx <= self.config.max_prefill_context
                   for q_len, n, ctx in zip(meta.query_lens, num_logits, meta.context_lens_host))

    def _early_exit(self, num_layers: int):
        """A copy of the C model that stops after the first `num_layers` layers (a draft step)."""
        early = self.early_exits[num_layers] = _Model.from_buffer_copy(self.c_model)
        early.num_layers = num_layers
        return early

    def __call__(self, input_ids, positions, meta):
        if not (meta.is_decode or self.runs(meta)):
            with reusing_buffers():  # (the torch modules: each layer's weight unpacked as it runs)
                return super().__call__(input_ids, positions, meta)
        c_model = self.early_exits.get(meta.num_layers) or self._early_exit(meta.num_layers)
        n = len(input_ids)
        if meta.is_decode and meta.num_logits is None and n <= CHUNK:  # a decode: one call, every row scored
            logits = torch.empty(n, self.vocab, dtype=torch.float32)
            status = self.fn(ctypes.byref(c_model), input_ids.data_ptr(), positions.data_ptr(),
                             meta.slot_mapping.data_ptr(), meta.block_tables.data_ptr(), meta.block_tables.shape[1],
                             meta.context_lens.data_ptr(), n, self._every_row(n).data_ptr(), n,
                             self._work(n).data_ptr(), logits.data_ptr(), torch.get_num_threads())
            if status != 0:
                raise MemoryError("forward=fused_cpu: the step could not allocate its attention scores")
            return logits
        last = logits_rows(meta)
        # a row per token: its sequence's block table, and the tokens up to it as context
        tables, context_lens = ((meta.block_tables, meta.context_lens) if meta.is_decode else
                                (meta.block_tables.repeat_interleave(torch.tensor(meta.query_lens), dim=0),
                                 (positions + 1).to(torch.int32)))
        logits = torch.empty(len(last), self.vocab, dtype=torch.float32)
        work = torch.empty(min(n, CHUNK) * self.work_per_seq, dtype=torch.float32)
        for start in range(0, n, CHUNK):
            end = min(start + CHUNK, n)
            lo, hi = torch.searchsorted(last, torch.tensor([start, end])).tolist()  # (`last` ascends)
            rows, out = last[lo:hi] - start, logits[lo:hi]  # the scored rows among this call's, their logits
            ptrs = [t[start:].data_ptr() for t in (input_ids, positions, meta.slot_mapping, tables, context_lens)]
            status = self.fn(ctypes.byref(c_model), *ptrs[:4], tables.shape[1], ptrs[4], end - start, rows.data_ptr(),
                             len(rows), work.data_ptr(), out.data_ptr(), torch.get_num_threads())
            if status != 0:
                raise MemoryError("forward=fused_cpu: a thread of the step could not allocate its scratch (attention "
                                  "scores, a dequantized weight panel)")
        return logits

    def _every_row(self, n: int) -> torch.Tensor:
        """0 .. n-1 (int64): a decode step's scored rows, kept from step to step."""
        if len(self.rows) < n:
            self.rows = torch.arange(max(n, 2 * len(self.rows)), dtype=torch.int64)
        return self.rows

    def _work(self, n: int) -> torch.Tensor:
        """The C step's scratch for n rows, kept from step to step (the step runs one call at a time)."""
        if len(self.work) < n * self.work_per_seq:
            self.work = torch.empty(n * self.work_per_seq, dtype=torch.float32)
        return self.work

    def close(self):
        self.packed.clear()
        self.held = []
        self.rows = self.work = torch.empty(0)
        self.layers = self.c_model = None  # pointers into the weights and the cache
        self.moe_layers = []
        self.early_exits.clear()


@hookimpl
def register_forward_strategies(register):
    register(FusedCPUForward)
