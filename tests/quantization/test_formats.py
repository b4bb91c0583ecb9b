"""Weight formats: each computes exactly what transformers computes on the weights it stands for
(the round trip done here apart from the engine: the layout's own functions for int8/int4, gguf's
own dequantizer for GGUF blocks), and bad input is refused before anything loads, naming the key or
tensor, the value and what works."""
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
from nvllm.kernels import OLDER_CPUS
from nvllm.quantization.gguf import blocks
from nvllm.models.layers.packed import GROUP, dequantize, quantize_int4, quantize_int8
from nvllm.testing import hf_greedy, write_gguf
from nvllm.testing.quantization import embedding_weights, gguf_quantize, linear_weights, round_tripped, with_weights

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def prompts_for(vocab: int) -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randrange(vocab) for _ in range(n)] for n in (1, 7, 33, 70)]


def nvllm_greedy(path, prompts, **overrides):
    """Greedy tokens, and the engine (closed), having checked that every linear layer is packed (and
    a mixture of experts' experts)."""
    from nvllm.models.layers.moe import FusedMoE
    from nvllm.quantization.base import linear_layers

    with LLM(path, max_model_len=256, max_num_batched_tokens=512, kv_cache={"block_size": 16}, **overrides) as llm:
        model = llm.engine.executor.model
        layers = linear_layers(model)
        assert layers and all(m.qweight is not None and m.weight is None for _, m in layers)
        assert all(m.w13 is None and m.w2_qweight is not None for m in model.modules() if isinstance(m, FusedMoE))
        return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)], llm.engine


def test_int8_error_is_at_most_half_a_step_and_int4_within_its_range():
    w = torch.randn(8, 4 * GROUP) * torch.logspace(-3, 1, 8)[:, None]
    q8 = quantize_int8(w)
    d = q8["scales"].float().repeat_interleave(GROUP, dim=1)
    assert q8["qweight"].abs().max() <= 127
    assert ((dequantize(**q8, mins=None) - w).abs() <= d / 2 + 1e-6 * w.abs()).all()
    q4 = quantize_int4(w)
    assert q4["qweight"].dtype == torch.uint8 and q4["qweight"].shape == (8, 2 * GROUP)
    d = q4["scales"].float().repeat_interleave(GROUP, dim=1)
    assert ((dequantize(**q4) - w).abs() <= d * 0.51 + 1e-3 * w.abs()).all()


@pytest.mark.parametrize("block_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_move_into_the_layout_and_dequantize_as_gguf_does(block_type):
    import gguf

    w = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32)
    kind = gguf.GGMLQuantizationType[block_type]
    stored = gguf.quants.quantize(w, kind)
    packed = blocks(stored, block_type, "blk.0.attn_q.weight")
    assert torch.equal(dequantize(packed["qweight"], packed["scales"], packed.get("mins")),
                       torch.from_numpy(gguf.quants.dequantize(stored, kind)))


def random_q4_k(rows: int, super_blocks: int, rng) -> np.ndarray:
    """Valid Q4_K bytes drawn over everything the block holds: any 6-bit scales, minimums and quants,
    float16 d and dmin of any exponent (subnormals too) and sign."""
    raw = rng.integers(0, 256, (rows, super_blocks, 144), dtype=np.uint8)
    scales = rng.standard_normal((rows, super_blocks, 2)) * np.exp2(rng.integers(-24, 4, (rows, super_blocks, 2)))
    raw[..., :4] = scales.astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def test_q4_k_blocks_move_into_int4_with_float32_scales_bit_for_bit():
    """Q4_K's d * sc and -dmin * m in float32 and its quants as int4 nibbles: dequantized, bit for bit
    gguf's own dequantizer's weights, at 24 bytes per 32 (float16 scales could not hold d * sc)."""
    import gguf

    rng = np.random.default_rng(0)
    for stored in (random_q4_k(12, 3, rng), gguf_quantize(rng.standard_normal((8, 512)).astype(np.float32), "Q4_K")):
        packed = blocks(stored, "Q4_K", "blk.0.ffn_down.weight")
        want = torch.from_numpy(gguf.quants.dequantize(stored, gguf.GGMLQuantizationType.Q4_K))
        assert packed["scales"].dtype == packed["mins"].dtype == torch.float32
        assert sum(t.numel() * t.element_size() for t in packed.values()) == want.numel() // GROUP * 24
        assert torch.equal(dequantize(packed["qweight"], packed["scales"], packed["mins"]), want)
    assert (packed["scales"].half().float() != packed["scales"]).any()  # float16 would round them


FORWARDS = ["eager", "fused_cpu"]  # the torch modules' dequantizing linear, and the C step's kernels


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_equals_transformers_on_the_round_tripped_weights(fmt, arch, forward, tiny_llama_path, tiny_qwen3_path,
                                                                 tmp_path):
    """Quantize each Hugging Face weight alone (q, k and v apart), dequantize, and give transformers
    those weights: nvllm, which packs the fused q/k/v and gate/up layers, computes the same tokens
    through the torch modules and through the C step."""
    checkpoint = tiny_llama_path if arch == "llama" else tiny_qwen3_path
    reference = round_tripped(checkpoint, tmp_path / "round-trip", fmt)
    prompts = prompts_for(json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"])
    got, engine = nvllm_greedy(checkpoint, prompts, quantization=fmt, forward=forward)
    assert engine.config.quantization.name == fmt and engine.config.forward.name == forward
    assert got == hf_greedy(reference, prompts, GREEDY.max_tokens)


@pytest.mark.parametrize("isa", [None, "avx2"], ids=["native", "avx2"])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_the_c_step_at_many_rows_a_step_equals_transformers(fmt, isa, tiny_llama_path, tmp_path, monkeypatch):
    """20 sequences at once: every decode step has 20 rows and the prefill 20 rows of logits, so the C
    step multiplies every layer, the LM head included, a dequantized panel at a time (16 rows or more:
    cpu_step.c linear_rows), also as built without AVX-512; the tokens are transformers' still."""
    from nvllm.forward import fused_cpu

    reference = round_tripped(tiny_llama_path, tmp_path / "round-trip", fmt)
    rng = random.Random(2)
    vocab = json.loads((Path(tiny_llama_path) / "config.json").read_text())["vocab_size"]
    prompts = [[rng.randrange(vocab) for _ in range(1 + 3 * i)] for i in range(20)]
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", OLDER_CPUS["avx2"] if isa else "")
    fused_cpu.kernel.cache_clear()
    try:
        assert isa is None or fused_cpu.isa() == isa
        got, engine = nvllm_greedy(tiny_llama_path, prompts, quantization=fmt, forward="fused_cpu")
    finally:
        fused_cpu.kernel.cache_clear()
    assert engine.config.forward.name == "fused_cpu"
    assert got == hf_greedy(reference, prompts, GREEDY.max_tokens)


@pytest.mark.parametrize("forward", [None, *FORWARDS])
@pytest.mark.parametrize("block_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_greedy_equals_transformers_on_gguf_dequantized_weights(block_type, forward, tiny_llama_path, tmp_path):
    import gguf

    from nvllm.tools.bench_peers.llamacpp import permute_rotary  # noqa: F401  (write_gguf permutes; gguf reads back)

    file = write_gguf(tiny_llama_path, str(tmp_path / "tiny.gguf"), block_type)
    kind = gguf.GGMLQuantizationType[block_type]
    weights = {k: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), kind), kind))
               for k, w in linear_weights(tiny_llama_path).items()}
    q8 = gguf.GGMLQuantizationType.Q8_0  # the (tied) embedding: Q8_0 whatever the linear layers' type
    weights |= {k: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), q8), q8))
                for k, w in embedding_weights(tiny_llama_path).items()}
    reference = with_weights(tiny_llama_path, tmp_path / "dequantized", weights)
    prompts = prompts_for(512)
    got, engine = nvllm_greedy(tiny_llama_path, prompts, quantization={"name": "gguf", "file": file},
                               **({"forward": forward} if forward else {}))
    if forward is None:  # forward=auto: the C step
        assert engine.config.forward.name == "fused_cpu" and "quantization=gguf" in engine.config.forward_choice
    assert got == hf_greedy(reference, prompts, GREEDY.max_tokens)


def test_gguf_keeps_a_q8_0_embedding_as_stored_and_an_f16_one_in_dtype(tiny_llama_path, tmp_path):
    """llama.cpp's quantized files store token_embd (the tied head) as Q8_0: those blocks are kept, one
    copy for the embedding and the head; a file that stores it otherwise leaves it as loaded."""
    from gguf import GGUFReader

    for kind in ("Q8_0", "F16"):
        file = write_gguf(tiny_llama_path, str(tmp_path / f"{kind}.gguf"), "Q4_1", {"token_embd.weight": kind})
        with LLM(tiny_llama_path, quantization={"name": "gguf", "file": file}, max_model_len=256) as llm:
            model = llm.engine.executor.model
            table = model.model.embed_tokens
            assert model.lm_head.qweight is table.qweight and model.lm_head.held is table.held
            if kind == "F16":  # (held as the C step's float32 panels)
                assert table.qweight is None and table.dense_weight(None).dtype == torch.float32
                continue
        stored = next(t for t in GGUFReader(file).tensors if t.name == "token_embd.weight")
        assert torch.equal(table.qweight, blocks(stored.data, "Q8_0", stored.name)["qweight"])


@pytest.fixture(scope="module")
def q4_k_llama_path(tmp_path_factory) -> str:
    """A tiny random Llama whose linear layers' k (hidden, q heads, intermediate) are multiples of 256."""
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("llama", str(tmp_path_factory.mktemp("q4-k-llama")), preset="tiny", seed=1,
                                  hidden_size=256, intermediate_size=512, head_dim=64)


@pytest.fixture(scope="module")
def q4_k_file_and_tokens(q4_k_llama_path, tmp_path_factory):
    """A Q4_K file of the checkpoint's linear layers (its embedding Q8_0), and transformers' greedy
    tokens (float32) on the weights gguf's dequantizer makes of its blocks."""
    import gguf

    tmp = tmp_path_factory.mktemp("q4-k")
    file = write_gguf(q4_k_llama_path, str(tmp / "q4_k.gguf"), "Q4_K")
    kind = gguf.GGMLQuantizationType.Q4_K
    weights = {k: torch.from_numpy(gguf.quants.dequantize(gguf_quantize(w.numpy(), "Q4_K"), kind))
               for k, w in linear_weights(q4_k_llama_path).items()}
    q8 = gguf.GGMLQuantizationType.Q8_0  # the (tied) embedding, as write_gguf stores it
    weights |= {k: torch.from_numpy(gguf.quants.dequantize(gguf_quantize(w.numpy(), "Q8_0"), q8))
                for k, w in embedding_weights(q4_k_llama_path).items()}
    want = hf_greedy(with_weights(q4_k_llama_path, tmp / "dequantized", weights), prompts_for(512), GREEDY.max_tokens)
    assert want != hf_greedy(q4_k_llama_path, prompts_for(512), GREEDY.max_tokens)  # the blocks' weights show
    return file, want


@pytest.mark.parametrize("forward, isa", [(None, None), ("eager", None), ("fused_cpu", None),
                                          ("fused_cpu", "avx2"), ("fused_cpu", "portable")],
                         ids=["auto", "eager", "fused_cpu", "fused_cpu-avx2", "fused_cpu-portable"])
def test_gguf_q4_k_greedy_equals_transformers_on_gguf_dequantized_weights(forward, isa, q4_k_llama_path,
                                                                         q4_k_file_and_tokens, monkeypatch):
    """Through the torch modules and the C step (as built for this CPU, without AVX-512, without AVX2)."""
    from nvllm.forward import fused_cpu

    file, want = q4_k_file_and_tokens
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", {None: "", **OLDER_CPUS}[isa])
    fused_cpu.kernel.cache_clear()
    try:
        assert isa is None or fused_cpu.isa() == isa
        got, engine = nvllm_greedy(q4_k_llama_path, prompts_for(512), quantization={"name": "gguf", "file": file},
                                   **({"forward": forward} if forward else {}))
    finally:
        fused_cpu.kernel.cache_clear()
    if forward is None:  # forward=auto: the C step
        assert engine.config.forward.name == "fused_cpu"
    assert got == want


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_resident_bytes_are_the_packed_layers_and_int8_tables_plus_the_norms_in_float32(arch, tiny_llama_path,
                                                                                          moe_checkpoint):
    """The embedding and LM head are int8 (8.5 bits a weight) in every packed format, one table where
    they are tied (the tiny Llama); a mixture of experts: its router and experts count among the
    packed weights."""
    from nvllm.engine.startup import startup_line

    path = tiny_llama_path if arch == "llama" else moe_checkpoint
    with LLM(path, max_model_len=256, forward="eager") as llm:  # (the C step's panels pad rows to 16)
        float_bytes = llm.engine.executor.weight_bytes()
    linear = sum(w.numel() for w in linear_weights(path).values())
    embedding = sum(w.numel() for w in embedding_weights(path).values())
    rest = float_bytes - 4 * (linear + embedding)
    for fmt, bits in (("int8", 8.5), ("int4", 5.0)):
        with LLM(path, max_model_len=256, quantization=fmt) as llm:
            model = llm.engine.executor.model
            assert model.lm_head.qweight is not None
            assert (model.lm_head.qweight is model.model.embed_tokens.qweight) == (arch == "llama")
            want = rest + linear * bits / 8 + embedding * 8.5 / 8
            assert llm.engine.executor.weight_bytes() == want
            line = startup_line(llm.engine)
        assert f"weights {want / 2**20:.1f} MiB (quantization={fmt}, linear layers and embedding packed, norms float32)" in line


# -- refused before loading -------------------------------------------------------------------------------------


def test_an_unsupported_gguf_block_type_is_refused_naming_the_tensor_and_type(tiny_llama_path, tmp_path):
    file = write_gguf(tiny_llama_path, str(tmp_path / "mixed.gguf"), "Q8_0", {"blk.1.ffn_down.weight": "Q5_0"})
    with pytest.raises(ConfigError, match=r"tensor blk\.1\.ffn_down\.weight is stored as Q5_0.*Q8_0, Q4_0, Q4_1"):
        LLM(tiny_llama_path, quantization={"name": "gguf", "file": file})


def test_q4_k_is_held_at_24_bytes_per_32_weights_and_priced_so(q4_k_llama_path, tmp_path):
    from nvllm.quantization.gguf import GGUF

    file = write_gguf(q4_k_llama_path, str(tmp_path / "q4_k.gguf"), "Q4_K", {"blk.1.ffn_down.weight": "Q8_0"})
    linear = linear_weights(q4_k_llama_path)
    q8_0 = linear["model.layers.1.mlp.down_proj.weight"].numel()
    total = sum(w.numel() for w in linear.values())
    assert GGUF.bytes_per_weight(GGUF.Config(file=file), 4) == ((total - q8_0) * 24 + q8_0 * 34) / 32 / total
    embedding = sum(w.numel() for w in embedding_weights(q4_k_llama_path).values())  # the file's Q8_0 table
    with LLM(q4_k_llama_path, max_model_len=256, forward="eager") as llm:
        rest = llm.engine.executor.weight_bytes() - 4 * (total + embedding)
    with LLM(q4_k_llama_path, max_model_len=256, quantization={"name": "gguf", "file": file}) as llm:
        assert llm.engine.executor.weight_bytes() == rest + ((total - q8_0) * 24 + (q8_0 + embedding) * 34) / 32


def test_q4_k_and_q4_1_in_one_fused_layer_are_refused(q4_k_llama_path, tmp_path):
    """Both int4, but Q4_K's scales are float32 and Q4_1's float16: two layouts."""
    file = write_gguf(q4_k_llama_path, str(tmp_path / "mixed.gguf"), "Q4_K", {"blk.0.ffn_up.weight": "Q4_1"})
    with pytest.raises(ConfigError, match=r"blk\.0\.ffn_gate\.weight \(int4, float32 scales\), "
                                          r"blk\.0\.ffn_up\.weight \(int4\) make one fused linear layer"):
        LLM(q4_k_llama_path, quantization={"name": "gguf", "file": file})


def test_a_q4_k_tensor_whose_k_is_no_multiple_of_256_is_refused_naming_it(q4_k_llama_path, tmp_path):
    """Q4_K's blocks are 256 weights along k: a model whose k is not a multiple of 256 cannot take a Q4_K
    tensor (llama.cpp stores such tensors in another type), and a file that claims one is unreadable."""
    import gguf

    from nvllm.tools.checkpoint import make_random_checkpoint

    file = write_gguf(q4_k_llama_path, str(tmp_path / "q4_k.gguf"), "Q4_K")
    odd = make_random_checkpoint("llama", str(tmp_path / "odd"), preset="tiny", hidden_size=320, head_dim=64)
    with pytest.raises(ConfigError, match=r"tensor blk\.0\.attn_q\.weight is stored as Q4_K, whose blocks are "
                                          r"256 weights along k.*\(n=256, k=320\), k not a multiple of 256"):
        LLM(odd, quantization={"name": "gguf", "file": file})
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), arch="llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((256, 162), dtype=np.int8), raw_shape=(256, 320),
                      raw_dtype=gguf.GGMLQuantizationType.Q4_K)  # 320 weights a row claimed, in 1.25 blocks
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
                  writer.close):
        write()
    with pytest.raises(ConfigError, match=r"bad\.gguf is not a readable GGUF file .*320.*Q4_K"):
        LLM(odd, quantization={"name": "gguf", "file": str(tmp_path / "bad.gguf")})


def test_a_fused_layer_of_two_layouts_is_refused(tiny_llama_path, tmp_path):
    file = write_gguf(tiny_llama_path, str(tmp_path / "mixed.gguf"), "Q8_0", {"blk.0.attn_k.weight": "Q4_1"})
    with pytest.raises(ConfigError, match=r"blk\.0\.attn_k\.weight \(int4\).*self_attn\.qkv_proj"):
        LLM(tiny_llama_path, quantization={"name": "gguf", "file": file})


def test_a_gguf_file_of_another_model_or_none_is_refused(tiny_llama_path, tmp_path):
    from nvllm.tools.checkpoint import make_random_checkpoint

    other = make_random_checkpoint("llama", str(tmp_path / "other"), preset="tiny", intermediate_size=96)
    file = write_gguf(other, str(tmp_path / "other.gguf"), "Q8_0")
    with pytest.raises(ConfigError, match=r"blk\.0\.ffn_gate\.weight has shape \(n=96, k=64\) and the model at "
                                          r"model.path needs \(n=128, k=64\)"):
        LLM(tiny_llama_path, quantization={"name": "gguf", "file": file})
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError, match="junk.gguf is not a readable GGUF file"):
        LLM(tiny_llama_path, quantization={"name": "gguf", "file": str(tmp_path / "junk.gguf")})
    with pytest.raises(ConfigError, match=r"quantization=gguf needs quantization.file=.*holds 0 \*\.gguf files"):
        LLM(tiny_llama_path, quantization="gguf")


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_an_already_quantized_checkpoint_is_refused_naming_its_method(method, tiny_llama_path, tmp_path):
    checkpoint = tmp_path / method
    shutil.copytree(tiny_llama_path, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": 128}
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"quantization_config \\(quant_method={method}\\).*quantization=int8 or int4"):
        LLM(str(checkpoint))


def test_a_k_that_is_no_multiple_of_32_is_refused(tmp_path):
    from nvllm.tools.checkpoint import make_random_checkpoint

    path = make_random_checkpoint("llama", str(tmp_path / "odd"), preset="tiny", intermediate_size=80)
    with pytest.raises(ConfigError, match=r"quantization=int8: the k of down_proj \(intermediate_size\) is 80, "
                                          r"not a multiple of 32"):
        LLM(path, quantization="int8")


def test_a_tp_that_would_split_a_group_is_refused_naming_the_numbers(tmp_path):
    from nvllm.tools.checkpoint import make_random_checkpoint

    path = make_random_checkpoint("llama", str(tmp_path / "split"), preset="tiny", intermediate_size=96)
    with pytest.raises(ConfigError, match=r"quantization=int4 with tp=2: down_proj splits its k \(intermediate_size = "
                                          r"96\) into 48 per rank, which is not a multiple of 32.*tp in \[1, 3\]"):
        LLM(path, quantization="int4", tp=2)


def test_onednn_refuses_packed_weights_and_auto_picks_the_c_step(tiny_llama_path):
    with pytest.raises(ConfigError, match=r"forward.onednn=true .* with quantization=int4"):
        LLM(tiny_llama_path, quantization="int4", forward={"name": "eager", "onednn": True})
    for fmt in ("int8", "int4"):
        with LLM(tiny_llama_path, quantization=fmt, max_model_len=256) as llm:
            c = llm.engine.config
            assert c.forward.name == "fused_cpu" and c.forward_choice.startswith("forward=auto chose fused_cpu")
            # the quantized rows, the embedding's and the LM head's included, are read in place: no copies
            step = llm.engine.executor.forward_strategy
            assert step.packed == {} and step.held == []


def test_int8_activations_are_a_named_option_of_the_c_step(tiny_llama_path):
    with pytest.raises(ConfigError, match=r"forward=eager cannot run here: quantization.activations=int8 multiplies "
                                          r"int8 activations in forward=fused_cpu's C step only"):
        LLM(tiny_llama_path, quantization={"name": "int8", "activations": "int8"}, forward="eager")
    with pytest.raises(ConfigError, match=r"quantization.activations='int4' is not allowed: use float or int8"):
        LLM(tiny_llama_path, quantization={"name": "int8", "activations": "int4"})
    with pytest.raises(ConfigError, match=r"quantization=none packs none: use quantization=int8, int4 or gguf with it"):
        LLM(tiny_llama_path, quantization={"name": "none", "activations": "int8"})
    with pytest.raises(ConfigError, match=r"quantization.activations='int4' is not allowed: use float or int8"):
        LLM(tiny_llama_path, quantization={"name": "none", "activations": "int4"})
    for fmt in ("int8", "int4"):
        with LLM(tiny_llama_path, quantization={"name": fmt, "activations": "int8"}, max_model_len=256) as llm:
            assert llm.engine.config.forward.name == "fused_cpu"


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_int8_activations_stay_close_to_float_activations(tiny_qwen3_path, fmt):
    """Not exact (the activations are rounded to 8 bits a block): each prefill position's next-token
    distribution stays close to the weight-only step's, and mostly puts the same token first."""
    from nvllm.tools.perplexity import scored_logprobs

    chunk = prompts_for(512)[-1]
    logprobs = {}
    for activations in ("float", "int8"):
        with LLM(tiny_qwen3_path, quantization={"name": fmt, "activations": activations}, forward="fused_cpu",
                 max_model_len=256, kv_cache={"block_size": 16}) as llm:
            logprobs[activations] = scored_logprobs(llm.engine, chunk)
    exact, int8 = logprobs["float"], logprobs["int8"]
    assert not torch.equal(exact, int8)  # the option does change the numerics
    kl = (exact.exp() * (exact - int8)).sum(-1)
    assert kl.mean() < 0.01, kl
    assert (exact.argmax(-1) == int8.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_int8_activations_of_a_lone_sequence_equal_its_row_in_a_batch(tiny_qwen3_path, fmt):
    """A single sequence's decode step rounds its activations in each thread (no barrier); in a batch
    the threads share the rounding out. The decode step's distribution is the same either way (up to
    the order of the float sums)."""
    prompts = prompts_for(512)[:3]
    sp = SamplingParams(temperature=0, max_tokens=2, logprobs=5)
    with LLM(tiny_qwen3_path, quantization={"name": fmt, "activations": "int8"}, max_model_len=256) as llm:
        alone = llm.generate([{"prompt_token_ids": prompts[0]}], sp)[0].outputs[0]
        batched = llm.generate([{"prompt_token_ids": p} for p in prompts], sp)[0].outputs[0]
    assert alone.token_ids == batched.token_ids
    step = alone.logprobs[1]  # the decode step's (the first token came from the prefill)
    assert step.keys() == batched.logprobs[1].keys()
    for token, logprob in step.items():
        assert abs(logprob.logprob - batched.logprobs[1][token].logprob) < 1e-4


@pytest.mark.parametrize("block_type", ["Q8_0", "Q4_0", "Q4_K"])
def test_int8_activations_run_a_gguf_files_blocks(block_type, tiny_llama_path, q4_k_llama_path, tmp_path):
    """quantization=gguf with activations=int8: the file's int8, int4 and Q4_K (float32 scales) layouts
    through the C step's integer dot products, close to the same blocks with float activations."""
    from nvllm.tools.perplexity import scored_logprobs

    path = q4_k_llama_path if block_type == "Q4_K" else tiny_llama_path
    file = write_gguf(path, str(tmp_path / "tiny.gguf"), block_type)
    logprobs = {}
    for activations in ("float", "int8"):
        with LLM(path, quantization={"name": "gguf", "file": file, "activations": activations}, max_model_len=256,
                 kv_cache={"block_size": 16}) as llm:
            assert llm.engine.config.forward.name == "fused_cpu"
            logprobs[activations] = scored_logprobs(llm.engine, prompts_for(512)[-1])
    exact, int8 = logprobs["float"], logprobs["int8"]
    assert not torch.equal(exact, int8)
    assert (exact.exp() * (exact - int8)).sum(-1).mean() < 0.01
    assert (exact.argmax(-1) == int8.argmax(-1)).float().mean() >= 0.9


def test_nvllm_run_reports_the_format_and_its_bytes(tmp_path, tiny_qwen3_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "model=qwen3", f"model.path={tiny_qwen3_path}",
                           "quantization=int4", "workload=random_tiny", "workload.num_seqs=2", "workload.output_len=[2,3]",
                           "workload.max_token_id=500", "max_model_len=160", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "weights 0.1 MiB (quantization=int4, linear layers and embedding packed, norms float32)" in proc.stdout, proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["effective_config"]["quantization"] == {"name": "int4", "activations": "float"}
    assert 0 < metrics["weight_bytes"] < 0.3 * 2**20


# -- the embedded SmolLM2 --------------------------------------------------------------------------------------

SMOLLM2_PROMPTS = ["What is the capital of France?", "def fibonacci(n):",
                   "Once upon a time, in a small village at the edge of a great forest, there lived"]


@pytest.fixture(scope="module")
def smollm2_prompts(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    return [tok.encode(t) for t in SMOLLM2_PROMPTS]


@pytest.mark.slow
def test_smollm2_gguf_blocks_are_the_weights_transformers_dequantizes(smollm2_path, smollm2_prompts):
    """quantization=gguf keeps the shipped Q4_1 blocks (and its Q8_0 tied embedding); dequantized they
    are bit for bit the float32 weights transformers made of the same file, so the greedy tokens are
    transformers' own."""
    from safetensors.torch import load_file

    from nvllm.testing.quantization import dequantized_weights

    with LLM(smollm2_path, quantization="gguf", max_model_len=256) as llm:
        assert llm.engine.config.quantization.file.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
        got = [o.outputs[0].token_ids for o in llm.generate(smollm2_prompts, GREEDY, use_tqdm=False)]
        runner = llm.engine.executor
        dequantized = dequantized_weights(runner.model, runner.hf_config)
        assert runner.model.model.embed_tokens.qweight is not None  # the file's Q8_0 token_embd, as stored
    want = load_file(str(Path(smollm2_path) / "model.safetensors"))
    assert len(dequantized) == 30 * 7 + 1
    for name, w in dequantized.items():
        assert torch.equal(w, want[name]), name
    assert got == hf_greedy(smollm2_path, smollm2_prompts, GREEDY.max_tokens)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_smollm2_greedy_equals_transformers_on_the_round_tripped_weights(fmt, smollm2_path, smollm2_prompts, tmp_path):
    reference = round_tripped(smollm2_path, tmp_path / "round-trip", fmt)
    want = hf_greedy(reference, smollm2_prompts, GREEDY.max_tokens)
    for forward in FORWARDS:
        got, _ = nvllm_greedy(smollm2_path, smollm2_prompts, quantization=fmt, forward=forward)
        assert got == want, forward


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["int4", "gguf"])
def test_tp2_shards_packed_weights_and_gives_tp1s_tokens(fmt, tiny_llama_path, tmp_path):
    """Each rank packs (int4) or reads (gguf: the file's blocks, through the layers' own shard
    loaders) its shard: o_proj and down_proj split k at a group boundary, the rest split rows."""
    quantization = {"name": fmt, **({"file": write_gguf(tiny_llama_path, str(tmp_path / "t.gguf"), "Q4_1")}
                                    if fmt == "gguf" else {})}
    prompts = prompts_for(512)
    tp1, _ = nvllm_greedy(tiny_llama_path, prompts, quantization=quantization)
    with LLM(tiny_llama_path, max_model_len=256, max_num_batched_tokens=512, quantization=quantization, tp=2) as llm:
        tp2 = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]
    assert tp2 == tp1


# -- a mixture of experts: router and experts packed --------------------------------------------------------


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory) -> str:
    """Tiny Qwen3-MoE (a dense layer, then two of 8 experts, 2 chosen per token; experts 32 wide), one file."""
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("qwen3_moe", str(tmp_path_factory.mktemp("qwen3-moe")), preset="tiny", seed=0)


@pytest.mark.parametrize("forward", ["eager", "fused_cpu", "fused_cpu-avx2"])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_a_mixture_of_experts_greedy_equals_transformers_on_the_round_tripped_weights(fmt, forward, moe_checkpoint,
                                                                                      tmp_path, monkeypatch):
    """Every expert's gate, up and down and the router quantized alone and dequantized for
    transformers: the torch modules (dequantizing the experts a step's tokens chose) and the C step
    (reading their packed rows; also built without AVX-512, as on an AVX2-only CPU) compute the same tokens."""
    from nvllm.forward import fused_cpu

    reference = round_tripped(moe_checkpoint, tmp_path / "round-trip", fmt)
    prompts = prompts_for(512)
    if forward.endswith("-avx2"):
        monkeypatch.setenv("NVLLM_KERNEL_FLAGS", OLDER_CPUS["avx2"])
        fused_cpu.kernel.cache_clear()
    try:
        if forward.endswith("-avx2"):
            assert fused_cpu.isa() == "avx2"
        got, _ = nvllm_greedy(moe_checkpoint, prompts, quantization=fmt, forward=forward.removesuffix("-avx2"))
    finally:
        fused_cpu.kernel.cache_clear()
    assert got == hf_greedy(reference, prompts, GREEDY.max_tokens)


def test_the_c_step_reads_each_chosen_packed_expert_once(moe_checkpoint):
    """The C step's expert counters with int4 experts: the bytes its matmuls read are each chosen
    expert's packed rows, scales and minimums (gate|up and down), once."""
    with LLM(moe_checkpoint, forward="fused_cpu", quantization="int4", max_model_len=64) as llm:
        step = llm.engine.executor.forward_strategy
        counters = step.count_experts()
        llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
        layers = [m for m in llm.engine.executor.model.modules() if hasattr(m, "w13_qweight")]
        for layer, counts in zip(layers, counters):
            expert_bytes = sum(t[0].nbytes for t in layer.packed_experts().values() if t is not None)
            used = int(counts[-1]) // expert_bytes  # the experts read, over the prefill (3 rows) and one decode step
            assert counts[:-1].sum() == (3 + 1) * layer.top_k
            assert counts[-1] == used * expert_bytes and 2 * layer.top_k <= used <= (3 + 1) * layer.top_k


@pytest.mark.slow  # tp=2 worker processes
def test_tp2_expert_parallel_int8_greedy_equals_transformers_on_the_round_tripped_weights(moe_checkpoint, tmp_path):
    reference = round_tripped(moe_checkpoint, tmp_path / "round-trip", "int8")
    prompts = prompts_for(512)
    got, _ = nvllm_greedy(moe_checkpoint, prompts, quantization="int8", tp=2, moe={"expert_parallel": True})
    assert got == hf_greedy(reference, prompts, GREEDY.max_tokens)


def test_experts_whose_k_is_no_multiple_of_32_are_refused(tmp_path):
    from nvllm.tools.checkpoint import make_random_checkpoint

    path = make_random_checkpoint("qwen3_moe", str(tmp_path / "odd"), preset="tiny", moe_intermediate_size=24)
    with pytest.raises(ConfigError, match=r"quantization=int4: the k of the experts' down \(w2\) "
                                          r"\(moe_intermediate_size\) is 24, not a multiple of 32"):
        LLM(path, quantization="int4")


def test_a_tp_that_would_split_an_experts_group_is_refused_and_expert_parallel_named(moe_checkpoint):
    """tp splits each expert's width (32 -> 16 a rank); moe.expert_parallel=true keeps experts whole."""
    with pytest.raises(ConfigError, match=r"quantization=int8 with tp=2: the experts' down \(w2\) splits its k "
                                          r"\(moe_intermediate_size = 32\) into 16 per rank, which is not a multiple "
                                          r"of 32.*tp in \[1\]\), moe.expert_parallel=true"):
        LLM(moe_checkpoint, quantization="int8", tp=2)


def test_gguf_on_a_mixture_of_experts_is_refused_naming_what_packs_it(moe_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"quantization=gguf reads a llama GGUF file's dense linear layers, and "
                                          r"model=qwen3_moe keeps its MLP in experts.*quantization=int8 or int4"):
        LLM(moe_checkpoint, quantization={"name": "gguf", "file": str(tmp_path / "model.gguf")})
