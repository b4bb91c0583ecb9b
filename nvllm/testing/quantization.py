"""QuantizationSuite: a weight format computes exactly what transformers computes on the weights
the format stands for; `write_gguf`, a GGUF file of a checkpoint's linear layers and embedding
(llama.cpp's layout, gguf's own quantizer, or `quantize_q4_k` where gguf has none) for tests of
quantization=gguf."""
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nvllm.errors import ConfigError
from nvllm.sampling_params import SamplingParams
from nvllm.testing.common import ComponentSuite
from nvllm.testing.model import hf_greedy

# the Hugging Face names of the Llama-family linear layers, and the GGUF names of the same tensors
LINEAR_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                     "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down"}
# the embedding table and the (untied) LM head: Hugging Face names -> GGUF names
EMBEDDING_GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight"}


def with_weights(checkpoint: str, out: Path, weights: dict[str, torch.Tensor]) -> str:
    """A copy of `checkpoint` (config, tokenizer files) whose safetensors hold `weights` in place of its own."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for f in Path(checkpoint).iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    state = load_file(str(Path(checkpoint) / "model.safetensors"))
    state.update({k: v.contiguous() for k, v in weights.items()})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


def linear_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """The checkpoint's linear layer weights, under their Hugging Face names: every matrix but the
    embedding and the LM head (a mixture of experts' router and each expert's included)."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(Path(checkpoint) / "model.safetensors")).items()
            if v.dim() == 2 and "embed_tokens" not in k and "lm_head" not in k}


def embedding_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """The checkpoint's embedding table and (untied) LM head, under their Hugging Face names."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(Path(checkpoint) / "model.safetensors")).items()
            if k in EMBEDDING_GGUF_NAMES}


def round_tripped(checkpoint: str, out: Path, fmt: str) -> str:
    """A copy of `checkpoint` whose linear weights are quantized to `fmt` (int8, int4) and
    dequantized, each Hugging Face tensor alone (q, k and v apart), and its embedding and LM head
    to int8 (every packed format's): the float32 weights a run with quantization=`fmt` stands for."""
    from nvllm.models.layers.packed import dequantize, quantize_int4, quantize_int8

    quantize = {"int8": quantize_int8, "int4": quantize_int4}[fmt]
    weights = {k: dequantize(**{"mins": None, **quantize(w)}) for k, w in linear_weights(checkpoint).items()}
    weights.update({k: dequantize(**quantize_int8(w), mins=None) for k, w in embedding_weights(checkpoint).items()})
    return with_weights(checkpoint, out, weights)


def dequantized_weights(model, hf_config) -> dict[str, torch.Tensor]:
    """Every linear layer's weight as a loaded nvllm model (tp=1) multiplies by it, in float32,
    under the Hugging Face names (fused q/k/v and gate/up split apart), and the embedding table
    and (untied) LM head."""
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    out = {}
    for i, layer in enumerate(model.model.layers):
        prefix = f"model.layers.{i}."
        q, k, v = layer.self_attn.qkv_proj.dense_weight(torch.float32).split(
            [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
        gate, up = layer.mlp.gate_up_proj.dense_weight(torch.float32).chunk(2)
        for name, w in (("self_attn.q_proj", q), ("self_attn.k_proj", k), ("self_attn.v_proj", v),
                        ("self_attn.o_proj", layer.self_attn.o_proj.dense_weight(torch.float32)),
                        ("mlp.gate_proj", gate), ("mlp.up_proj", up),
                        ("mlp.down_proj", layer.mlp.down_proj.dense_weight(torch.float32))):
            out[f"{prefix}{name}.weight"] = w.clone()
    out["model.embed_tokens.weight"] = model.model.embed_tokens.dense_weight(torch.float32).float().clone()
    if not getattr(hf_config, "tie_word_embeddings", False):
        out["lm_head.weight"] = model.lm_head.dense_weight(torch.float32).float().clone()
    return out


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """w [N, K] (K a multiple of 256) as GGUF Q4_K blocks, [N, K // 256 * 144] bytes: per sub-block of
    32, scale (max - min) / 15 and minimum min (at most 0) rounded to 6-bit multiples of the
    super-block's float16 d and dmin, q = round((w + dmin * m) / (d * sc)) in 0..15. Round to nearest
    (llama.cpp's quantizer searches for better scales): a valid file for tests, whose reference is
    gguf's dequantizer of these bytes."""
    n, k = w.shape
    sub = w.astype(np.float32).reshape(n, k // 256, 8, 32)
    low = np.minimum(sub.min(-1), 0)

    def six_bits(v):  # v [N, S, 8] >= 0 as a float16 per super-block times 0..63
        unit = (v.max(-1) / 63).astype(np.float16)
        safe = np.where(unit > 0, unit.astype(np.float32), 1)[..., None]
        return unit, np.clip(np.round(v / safe), 0, 63).astype(np.uint8)

    d, sc = six_bits((sub.max(-1) - low) / 15)
    dmin, m = six_bits(-low)
    scale = d.astype(np.float32)[..., None] * sc
    safe = np.where(scale > 0, scale, 1)[..., None]
    q = np.clip(np.round((sub + (dmin.astype(np.float32)[..., None] * m)[..., None]) / safe), 0, 15).astype(np.uint8)
    q = np.where(scale[..., None] > 0, q, 0)
    packed = np.concatenate([  # llama.cpp's get_scale_min_k4 packing: 6 bits each of 8 scales and 8 minimums
        sc[..., :4] | (sc[..., 4:] >> 4) << 6, m[..., :4] | (m[..., 4:] >> 4) << 6,
        (sc[..., 4:] & 15) | (m[..., 4:] & 15) << 4], axis=-1)
    qs = (q[..., 0::2, :] | q[..., 1::2, :] << 4).reshape(n, k // 256, 128)  # sub-blocks 2j, 2j + 1 in one 32 bytes
    blocks = np.concatenate([d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed, qs], axis=-1)
    return blocks.reshape(n, -1)


def gguf_quantize(w: np.ndarray, block_type: str) -> np.ndarray:
    """w [N, K] float32 as the bytes of GGUF blocks of `block_type` (gguf's quantizer, or quantize_q4_k)."""
    import gguf

    if block_type == "Q4_K":
        return quantize_q4_k(w)
    return gguf.quants.quantize(w.astype("float32"), gguf.GGMLQuantizationType[block_type])


def write_gguf(checkpoint: str, out: str, block_type: str = "Q8_0", types: dict[str, str] | None = None) -> str:
    """A llama GGUF file holding `checkpoint`'s linear layers quantized (gguf_quantize) to
    `block_type`, and its embedding table (and untied LM head) to Q8_0, as llama.cpp's quantized
    files store them (`types`: GGUF tensor name -> another type for that tensor), q and k rows in
    llama.cpp's rotary order, as convert_hf_to_gguf.py writes them."""
    import gguf
    from safetensors.numpy import load_file

    from nvllm.tools.bench_peers.llamacpp import permute_rotary

    config = json.loads((Path(checkpoint) / "config.json").read_text())
    writer = gguf.GGUFWriter(out, arch="llama")
    writer.add_block_count(config["num_hidden_layers"])
    for name, w in load_file(str(Path(checkpoint) / "model.safetensors")).items():
        module = next((m for m in LINEAR_GGUF_NAMES if f".{m}." in name), None)
        if name in EMBEDDING_GGUF_NAMES:
            gguf_name = EMBEDDING_GGUF_NAMES[name]
            kind = (types or {}).get(gguf_name, "Q8_0")
        elif module is None:
            continue
        else:
            if module == "self_attn.q_proj":
                w = permute_rotary(w, config["num_attention_heads"])
            elif module == "self_attn.k_proj":
                w = permute_rotary(w, config["num_key_value_heads"])
            gguf_name = f"blk.{name.split('.')[2]}.{LINEAR_GGUF_NAMES[module]}.weight"
            kind = (types or {}).get(gguf_name, block_type)
        writer.add_tensor(gguf_name, gguf_quantize(w, kind), raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


class QuantizationSuite(ComponentSuite):
    """On a tiny random-weight checkpoint of `model`, through forward=`forward`: greedy tokens equal
    transformers' (float32, CPU) running the weights the format stands for (each linear layer's
    dequantized weight, read back from the loaded model); the resident weights take no more bytes
    than float32's; a forward strategy the format cannot run is refused naming both, and
    forward=auto picks one that runs it. `setup_files(checkpoint, tmp_path)` returns Config fields a
    format needs from files (quantization=gguf: the file)."""

    family = "quantization"
    model: str = "llama"
    forward: str = "eager"
    max_new_tokens: int = 10

    def setup_files(self, checkpoint: str, tmp_path: Path) -> dict:
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory) -> str:
        from nvllm.tools.checkpoint import make_random_checkpoint

        return make_random_checkpoint(cls.model, str(tmp_path_factory.mktemp(f"quantization-{cls.name}")),
                                      preset="tiny", seed=0)

    def _llm(self, checkpoint, tmp_path, config_fields, **overrides):
        from nvllm import LLM

        fields = {**config_fields, **self.setup_files(checkpoint, tmp_path)}
        return LLM(checkpoint, quantization={"name": self.name, **fields}, kv_cache={"block_size": 16},
                   max_model_len=256, max_num_batched_tokens=512, **overrides)

    def test_matches_transformers_on_its_dequantized_weights(self, config_fields, checkpoint, tmp_path):
        vocab = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]
        rng = random.Random(0)
        prompts = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 9, 40)]
        greedy = SamplingParams(temperature=0, max_tokens=self.max_new_tokens, ignore_eos=True)
        with self._llm(checkpoint, tmp_path, config_fields, forward=self.forward) as llm:
            got = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
            runner = llm.engine.executor
            weights = dequantized_weights(runner.model, runner.hf_config)
        reference = with_weights(checkpoint, tmp_path / "dequantized", weights)
        assert got == hf_greedy(reference, prompts, self.max_new_tokens)

    def test_weights_take_no_more_bytes_than_float32(self, config_fields, checkpoint, tmp_path):
        from nvllm import LLM

        with self._llm(checkpoint, tmp_path, config_fields, forward=self.forward) as llm:
            packed = llm.engine.executor.weight_bytes()
        with LLM(checkpoint, max_model_len=256) as llm:
            assert packed <= llm.engine.executor.weight_bytes()

    def test_forward_strategies_it_cannot_run_are_refused_and_auto_avoids_them(self, config_fields, checkpoint,
                                                                                tmp_path):
        from nvllm import registry

        forwards = self.component.forwards
        if forwards is None:
            pytest.skip(f"quantization={self.name} runs with every forward strategy")
        for name in registry.names("forward"):
            if name not in forwards:
                with pytest.raises(ConfigError, match=f"forward={name}.*quantization={self.name}"):
                    self._llm(checkpoint, tmp_path, config_fields, forward=name)
        with self._llm(checkpoint, tmp_path, config_fields) as llm:
            assert llm.engine.config.forward.name in forwards
