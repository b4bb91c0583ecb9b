"""16-bit weights on a CPU (dtype=bfloat16 or float16): forward=fused_cpu keeps its packed matmul
weights and embedding in 16 bits and computes in float32, so its greedy tokens equal transformers'
in float32 on the same weights rounded to 16 bits, through the AVX-512 build of the C step and the
AVX2 one (and so do the quantized formats, on the weights they stand for); forward=eager runs the
torch modules in 16 bits with attention=cpu's float32 cache. The modules hold the C step's panels
as their weights' one copy."""
import random

import pytest
import torch

from nvllm import LLM, SamplingParams
from nvllm.forward import fused_cpu
from nvllm.kernels import OLDER_CPUS
from nvllm.testing import hf_greedy
from nvllm.testing.quantization import round_tripped
from nvllm.tools.checkpoint import make_random_checkpoint

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZED = ("int8", "int4")  # the C step's quantized formats (gguf's blocks are these layouts)
MAX_NEW = 16
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts():
    rng = random.Random(4)
    return [[rng.randrange(512) for _ in range(n)] for n in (1, 7, 33, 90)]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """Weights drawn wide (std 0.4), so greedy tokens vary and rounding the weights to 16 bits
    changes some of them: a step that computed on other weights than the rounded ones would show."""
    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("wide")), preset="tiny", seed=6,
                                  initializer_range=0.4)


@pytest.fixture(scope="module")
def references(tiny_path, prompts, tmp_path_factory):
    """transformers' greedy tokens, float32, on the weights as they are, rounded to each dtype, and
    round-tripped through each quantized format."""
    refs = {name: hf_greedy(tiny_path, prompts, MAX_NEW, round_to=dtype) for name, dtype in DTYPES.items()}
    refs["float32"] = hf_greedy(tiny_path, prompts, MAX_NEW)
    for fmt in QUANTIZED:
        refs[fmt] = hf_greedy(round_tripped(tiny_path, tmp_path_factory.mktemp(fmt), fmt), prompts, MAX_NEW)
        assert refs[fmt] != refs["float32"]
    assert refs["bfloat16"] != refs["float32"] and refs["float16"] != refs["float32"]
    return refs


def generate(path, prompts, inspect=lambda runner: None, **overrides):
    """Greedy tokens and the resolved config; `inspect(runner)` runs while the engine is up."""
    with LLM(path, kv_cache={"block_size": 8}, max_model_len=256, **overrides) as llm:
        inspect(llm.engine.executor)
        return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)], llm.engine.config


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_step_equals_transformers_on_the_rounded_weights(tiny_path, prompts, references, dtype):
    """max_prefill_context=8 would send the longer prompts' prefills to the torch modules in float32;
    with 16-bit weights the C step takes them all."""
    def resident(runner):
        # the matmul weights and the embedding held as panels in dtype only (bfloat16 where the step
        # reads them in 12 bits: bytes), the norms copied to float32
        twelve = dtype == "bfloat16" and fused_cpu.codes_bf16()
        step = runner.forward_strategy
        assert {t.dtype for panels in step.held for t in panels.tensors} == (
            {torch.uint8, torch.int32} if twelve else {DTYPES[dtype]})
        assert {t.dtype for t in step.packed.values()} == {torch.float32}
        assert runner.model.model.embed_tokens.weight is None
        assert all(m.k_cache.dtype == torch.float32 for m in runner._attention_layers())

    got, config = generate(tiny_path, prompts, resident, dtype=dtype,
                           forward={"name": "fused_cpu", "max_prefill_context": 8})
    assert config.forward.name == "fused_cpu" and config.attention.name == "cpu"
    assert got == references[dtype]
    with LLM(tiny_path, dtype=dtype) as llm:  # auto picks the C step for 16-bit weights too
        assert llm.engine.config.forward.name == "fused_cpu"


@pytest.mark.parametrize("isa, flags", OLDER_CPUS.items())
@pytest.mark.parametrize("fmt", ["float32", *DTYPES, *QUANTIZED])
def test_other_builds(tiny_path, prompts, references, fmt, isa, flags, monkeypatch):
    """The C step built without AVX-512 (as on an AVX2-only CPU), and without AVX2 (portable C),
    computes the same tokens, with weights in each dtype and each quantized format."""
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", flags)
    fused_cpu.kernel.cache_clear()
    try:
        assert fused_cpu.isa() == isa
        got, _ = generate(tiny_path, prompts, forward="fused_cpu",
                          **({"quantization": fmt} if fmt in QUANTIZED else {"dtype": fmt}))
    finally:
        fused_cpu.kernel.cache_clear()
    assert got == references[fmt]


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_packed_formats_from_16_bit_weights(tiny_path, prompts, references, tmp_path, fmt):
    """dtype=bfloat16 with a packed format: the C step reads the packed linear layers, embedding and
    LM head (quantized from the bfloat16 weights; the embedding and head in int8). transformers,
    float32, on every weight rounded to bfloat16, then round-tripped through the format."""
    from pathlib import Path

    from safetensors.torch import load_file

    from nvllm.testing.quantization import with_weights

    state = load_file(str(Path(tiny_path) / "model.safetensors"))
    rounded = with_weights(tiny_path, tmp_path / "bf16", {k: v.bfloat16().float() for k, v in state.items()})
    want = hf_greedy(round_tripped(rounded, tmp_path / fmt, fmt), prompts, MAX_NEW)
    assert want != references[fmt]  # the bfloat16 rounding shows in the tokens
    got, config = generate(tiny_path, prompts, dtype="bfloat16", quantization=fmt)
    assert config.forward.name == "fused_cpu"
    assert got == want


def test_bfloat16_in_12_bits_keeps_every_bit():
    """fused_cpu.code12 on weights with rows of very different scales, exact zeros (signed),
    subnormals, infinities and NaNs: read back, every bit is the plain panel's; the pairs whose
    exponents span too much are kept whole, and the rest take 49 bytes for 64. And the weight a
    module holds as such panels is the weight again where the torch modules unpack it."""
    torch.manual_seed(0)
    w = torch.randn(70, 96) * torch.exp(0.3 * torch.randn(70, 1))  # rows of a trained layer's spread
    w[3, :40] = 0.0
    w[5, 7] = -0.0
    w[9, 11] = 1e-40  # a float32 subnormal: bfloat16's smallest exponent
    w[11, 2], w[12, 3], w[13, 4] = float("inf"), float("-inf"), float("nan")
    w[48:] *= torch.exp(3 * torch.randn(22, 1))  # the last two panels' rows a thousandfold apart
    panels = fused_cpu.pack(w.bfloat16())
    data, escapes, start = fused_cpu.code12(panels)
    assert torch.equal(fused_cpu.decode12(data, escapes, 96).view(torch.int16), panels.view(torch.int16))
    escaped = (data[:, 48 * 48:48 * 49] == 255).sum(1).tolist()  # per panel, of its 48 pairs
    assert start.tolist() == [sum(escaped[:p]) for p in range(len(escaped))]
    assert sum(escaped[1:3]) <= 2 and min(escaped[3:]) > 24 and escaped[0] > 0  # (zeros and specials: few)
    assert data.shape == (5, -(-48 * 49 // 64) * 64) and escapes.shape == (sum(escaped) + 1, 64)
    for weight, in_12_bits in ((w.bfloat16(), True), (w.bfloat16(), False), (w.half(), False), (w, False)):
        held = fused_cpu.Panels.of(weight, in_12_bits)
        dense, ids = held.dense(), torch.tensor([[0, 69], [17, 17]])
        assert dense.dtype == weight.dtype and torch.equal(dense.view(torch.uint8), weight.view(torch.uint8))
        assert torch.equal(held.rows_of(ids).view(torch.uint8), weight[ids].view(torch.uint8))


@pytest.mark.parametrize("isa, flags, needs", [
    ("avx512", "", " avx512vbmi "), ("avx512", "-mno-avx512vbmi", " avx512f "), *((isa, flags, "") for isa, flags in OLDER_CPUS.items())])
def test_12_bit_panels_give_the_plain_panels_logits(tiny_path, prompts, isa, flags, needs, monkeypatch):
    """The C step reading bfloat16 panels in 12 bits (AVX-512 VBMI's vector code, or the portable
    unpacking the other builds fall back to) computes the plain panels' log-probabilities bit for bit;
    the tiny model's wide weights leave some pairs escaped, so that path runs too."""
    if needs and needs not in open("/proc/cpuinfo").read():
        pytest.skip(f"this CPU has no{needs}")
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", flags)
    fused_cpu.kernel.cache_clear()
    sampling = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=5)
    got = {}
    try:
        assert fused_cpu.isa() == isa
        for twelve in (False, True):
            monkeypatch.setattr(fused_cpu, "codes_bf16", lambda twelve=twelve: twelve)

            def escaped(runner):
                fw = runner.forward_strategy
                assert fw.code12 == twelve
                if twelve:
                    assert sum(len(panels.tensors[1]) - 1 for panels in fw.held if len(panels.tensors) == 3)

            with LLM(tiny_path, kv_cache={"block_size": 8}, max_model_len=256, dtype="bfloat16",
                     forward="fused_cpu") as llm:
                escaped(llm.engine.executor)
                got[twelve] = [(o.outputs[0].token_ids, o.outputs[0].logprobs)
                               for o in llm.generate(prompts, sampling, use_tqdm=False)]
    finally:
        fused_cpu.kernel.cache_clear()
    assert got[True] == got[False]


@pytest.mark.parametrize("dtype", ["float32", *DTYPES])
def test_the_modules_hold_the_steps_panels_as_the_one_copy_of_their_weights(tiny_path, dtype):
    """Packed once, the C step's panels replace the float weights the modules held (a tied table and
    head share one): the resident weights are the format's bytes a parameter, plus the panels' rows
    padded to 16 and the 16-bit norms' float32 copies, not a model copy beside a packed one."""
    from safetensors.torch import load_file

    parameters = sum(t.numel() for t in load_file(f"{tiny_path}/model.safetensors").values())
    with LLM(tiny_path, dtype=dtype, max_model_len=256) as llm:
        runner = llm.engine.executor
        assert llm.engine.config.forward.name == "fused_cpu"
        assert [name for name, p in runner.model.named_parameters() if p.dim() > 1] == []
        assert runner.weight_bytes() <= 1.05 * parameters * torch.tensor([], dtype=runner.dtype).element_size()


def test_this_cpu_builds_its_widest_code():
    flags = open("/proc/cpuinfo").read()
    assert fused_cpu.isa() == ("avx512" if " avx512f " in flags else "avx2" if " avx2 " in flags else "portable")


def test_eager_runs_16_bit_modules_with_a_float32_cache(tiny_path, prompts, references):
    """forward=eager with dtype=bfloat16 computes in bfloat16 (so its tokens may drift from the
    float32 reference), attention=cpu in float32 over a float32 cache; its first tokens agree."""
    def resident(runner):
        assert runner.model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
        assert all(m.k_cache.dtype == torch.float32 for m in runner._attention_layers())

    got, config = generate(tiny_path, prompts, resident, dtype="bfloat16", forward="eager")
    assert config.attention.name == "cpu"
    assert [g[0] for g in got] == [r[0] for r in references["bfloat16"]]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_smollm2(smollm2_path, dtype):
    """The embedded SmolLM2 through the C step, chat prompts, against transformers on its rounded weights."""
    from transformers import AutoTokenizer

    from tests.test_parity import CHAT

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    chat = [tok.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for m in CHAT]
    got, config = generate(smollm2_path, chat, dtype=dtype, max_num_batched_tokens=2048)
    assert config.forward.name == "fused_cpu"
    assert got == hf_greedy(smollm2_path, chat, MAX_NEW, round_to=DTYPES[dtype])
