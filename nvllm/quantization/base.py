"""The quantization family: how the weights of the linear layers (attention's q/k/v and output,
the MLP's gate/up and down, a mixture of experts' router and experts) are stored and multiplied.
A packed format also holds the embedding table and the LM head in the int8 layout (GGUF Q8_0), as
llama.cpp keeps them at 8 bits in every quantized file, its 4-bit ones included: a tied head shares
the embedding's one packed copy. Norms (and, with quantization=none, everything) stay in `dtype`.
A format's life:

    cls.resolve(config, model_config)     its Config with every `auto`/null filled in (a file to read)
    cls.check(config, hf_config, target)  before anything loads: raise ConfigError naming the key or
                                          tensor, the value and what works
    cls.check_forward(forward_name, config)  can this forward strategy run it? (forward=auto skips those that cannot)
    cls.bytes_per_weight(config, dtype_bytes)  what a linear layer's weight takes, scales included
                                          (forward=simulated's cost model streams that many bytes a weight)
    cls.embedding_bytes_per_weight(config, dtype_bytes)  the same for the embedding table and LM head
    method = cls(config)
    method.apply(model, path)             once the float weights are loaded: pack each linear layer's
                                          weight (nvllm/models/layers/packed.py), each expert's, the
                                          embedding's and the head's, freeing the float ones
"""
from typing import ClassVar

from nvllm.errors import ConfigError
from nvllm.models.layers.packed import GROUP

# What a packed format's linear layers and LM head multiply their weights by (quantization.activations):
# float (the activations in dtype, the weights dequantized: exact), or int8 (each block of 32 of a
# row's activations rounded to int8 with a scale of its own, max |x| / 127, and each block's products
# summed in int32: llama.cpp's arithmetic for its quantized files; VNNI's vpdpbusd where the CPU has
# it). int8 changes the numerics, so it is never the default; forward=fused_cpu's C step only.
ACTIVATIONS = ("float", "int8")


def check_activations(config) -> None:
    """A format Config's __post_init__: refuse an unknown quantization.activations."""
    if config.activations not in ACTIVATIONS:
        raise ConfigError(f"quantization.activations={config.activations!r} is not allowed: use "
                          f"{' or '.join(ACTIVATIONS)}")


def linear_inputs(hf_config) -> list[tuple[str, str, int, bool]]:
    """(layers, what sets their k, k, whether tp splits k) for the Llama-family linear layers: the
    row-parallel ones (o_proj, down_proj) split their input across ranks."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return [("q/k/v_proj, gate/up_proj", "hidden_size", hf_config.hidden_size, False),
            ("o_proj", "num_attention_heads x head_dim", heads * head_dim, True),
            ("down_proj", "intermediate_size", hf_config.intermediate_size, True)]


def expert_inputs(hf_config, arch, expert_parallel: bool) -> list[tuple[str, str, int, bool]]:
    """The same for a mixture of experts' stacked experts (`arch.moe_keys`: the experts' count and
    width keys): tp splits each expert's width, the k of its down projection, unless
    `expert_parallel` places whole experts on ranks."""
    width = arch.moe_keys[1]
    return [("the experts' gate/up (w13)", "hidden_size", hf_config.hidden_size, False),
            ("the experts' down (w2)", width, getattr(hf_config, width), not expert_parallel)]


class QuantizationMethod:
    name: ClassVar[str]
    # the forward strategies that run this format: those that run the model's torch modules, whose
    # linear layers dequantize (on CUDA, read the packed weights with Triton's weight-only matmuls,
    # which CUDA graphs capture), forward=fused_cpu's C step (it reads the packed rows and
    # dequantizes in registers), and forward=simulated, whose cost model prices the format's bytes
    # (bytes_per_weight). None: every strategy, and no check of the packed layers' shapes
    forwards: ClassVar[tuple[str, ...] | None] = ("eager", "cudagraph", "fused_cpu", "simulated")

    @classmethod
    def resolve(cls, config, model_config):
        return config

    @classmethod
    def check(cls, config, hf_config, target) -> None:
        """Refuse a checkpoint already quantized in a format nvllm does not read, and (for a packed
        format) a linear layer whose k is no multiple of 32 or whose k tp would split mid-group."""
        quantized = getattr(hf_config, "quantization_config", None)
        if quantized is not None:
            method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else \
                getattr(quantized, "quant_method", "?")
            raise ConfigError(
                f"the checkpoint's config.json has quantization_config (quant_method={method}): its weights are "
                f"already quantized in a format nvllm does not read. nvllm quantizes a float checkpoint itself "
                f"(quantization=int8 or int4) or keeps a GGUF file's blocks (quantization=gguf): point model.path at "
                f"the float (or 16-bit) checkpoint")
        if cls.forwards is None:
            return
        inputs = linear_inputs(hf_config)
        if getattr(target.model, "moe_keys", None):
            inputs += expert_inputs(hf_config, target.model, target.expert_parallel)
        for layers, what, k, split in inputs:
            if k % GROUP:
                raise ConfigError(f"quantization={config.name}: the k of {layers} ({what}) is {k}, not a multiple of "
                                  f"{GROUP} (the group size of every packed format); use quantization=none")
            if split and target.tp > 1 and (k // target.tp) % GROUP:
                fits = [t for t in range(1, 9) if k % t == 0 and (k // t) % GROUP == 0]
                raise ConfigError(f"quantization={config.name} with tp={target.tp}: {layers} splits its k ({what} = "
                                  f"{k}) into {k // target.tp} per rank, which is not a multiple of {GROUP}: a group "
                                  f"would straddle two ranks. Use a tp whose share is a multiple of {GROUP} "
                                  f"(tp in {fits})" + (", moe.expert_parallel=true (whole experts on each rank)"
                                                       if "experts'" in layers else "") + ", or quantization=none")

    @classmethod
    def check_forward(cls, forward: str, config=None) -> None:
        """Refuse a forward strategy that cannot run this format (`config`: the format's options, where known)."""
        if cls.forwards is not None and forward not in cls.forwards:
            raise ConfigError(f"quantization={cls.name} runs with forward={' or '.join(cls.forwards)}, not "
                              f"forward={forward}, which reads weights in dtype only; use forward=auto, or "
                              f"quantization=none")
        if getattr(config, "activations", "float") == "int8" and forward != "fused_cpu":
            raise ConfigError(f"quantization.activations=int8 multiplies int8 activations in forward=fused_cpu's C "
                              f"step only, not forward={forward}; use forward=fused_cpu (or auto) on a CPU, or "
                              f"quantization.activations=float")

    @classmethod
    def bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        """Bytes one weight of a linear layer takes in this format, its share of the scales and
        minimums included; `dtype_bytes`: what a weight in `dtype` takes (the other weights')."""
        return dtype_bytes

    @classmethod
    def embedding_bytes_per_weight(cls, config, dtype_bytes: int) -> float:
        """Bytes one weight of the embedding table (and LM head) takes: `dtype_bytes` unless the
        format packs them (`pack_embeddings`)."""
        return dtype_bytes

    def __init__(self, config):
        self.config = config

    def apply(self, model, path: str) -> None:
        """Pack every linear layer's weight (nothing for quantization=none)."""


def linear_layers(model):
    """(name, module) of every linear layer a format packs."""
    from nvllm.models.layers.linear import LinearBase

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LinearBase)]


def pack_embeddings(model, pack) -> None:
    """Hold the embedding table and the LM head packed: `pack(name, module)` gives the module's packed
    tensors (its rank's vocabulary shard, as its float `weight`), or None to leave it in `dtype`. A
    tied head is given the embedding's tensors: one packed copy that both read."""
    from nvllm.models.layers.embed_head import VocabParallelEmbedding

    packed = {}  # id of a float weight -> (the weight, kept alive here, and its packed tensors)
    for name, m in model.named_modules():
        if isinstance(m, VocabParallelEmbedding) and m.weight is not None:
            if id(m.weight) not in packed:
                packed[id(m.weight)] = m.weight, pack(name, m)
            if packed[id(m.weight)][1] is not None:
                m.quantize(packed[id(m.weight)][1])


def resident_weight_bytes(model) -> int:
    """Bytes the model's weights hold: every parameter once (tied ones once), and the packed buffers
    (the linear layers', the embedding's and the LM head's (a tied head's once), and the experts'),
    and the copies held in the float weights' place (forward=fused_cpu's panels: PackedWeight.hold)."""
    from nvllm.models.layers.linear import PackedWeight
    from nvllm.models.layers.moe import FusedMoE

    tensors = {id(t): t for t in model.parameters()}
    for m in model.modules():
        if isinstance(m, PackedWeight):
            tensors.update({id(t): t for t in (m.qweight, m.scales, m.mins) if t is not None})
            tensors.update({id(t): t for t in (m.held.tensors if m.held is not None else ())})
        if isinstance(m, FusedMoE):
            tensors.update({id(t): t for t in m.packed_experts().values() if t is not None})
            tensors.update({id(t): t for held in m.held.values() for t in held.tensors})
    return sum(t.numel() * t.element_size() for t in tensors.values())
