"""forward=fused_cpu (nvllm/kernels/cpu_step.c): the C forward pass computes what the torch modules
compute — the same logits (to float32 rounding) and the same K/V written to the cache — for every
Llama-family variant and a mixture of experts (qwen3_moe: a dense layer, then experts), in prefill (whole, and split into calls of a few rows) and decode, at batch
sizes that exercise each tile shape."""
import random

import pytest
import torch

from nvllm import LLM, SamplingParams
from nvllm.errors import ConfigError
from nvllm.engine.model_runner import step_inputs
from nvllm.forward import fused_cpu
from nvllm.forward.eager import EagerForward
from nvllm.tools.checkpoint import make_random_checkpoint
from tests.models.test_architectures import VARIANTS


def compare_step(runner, plan):
    """One scheduled step through the C step and through the torch modules, from the same cache."""
    inputs = runner.prepare(*step_inputs(plan))
    layers = runner._attention_layers()
    before = [(m.k_cache.clone(), m.v_cache.clone()) for m in layers]
    fused = runner.forward(*inputs)
    after_fused = [(m.k_cache.clone(), m.v_cache.clone()) for m in layers]
    for m, (k, v) in zip(layers, before):
        m.k_cache.copy_(k), m.v_cache.copy_(v)
    with torch.inference_mode():
        plain = EagerForward.__call__(runner.forward_strategy, *inputs)  # the same step through the torch modules
    for m, (k, v) in zip(layers, after_fused):
        torch.testing.assert_close(k, m.k_cache, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, m.v_cache, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    assert fused.argmax(-1).tolist() == plain.argmax(-1).tolist()


@pytest.mark.parametrize("variant", ["llama", "llama-bias", "llama3-rope-scaling", "qwen3", "qwen2", "qwen3_moe"])
@pytest.mark.parametrize("num_seqs", [1, 2, 7])
def test_step_matches_the_torch_modules(variant, num_seqs, tmp_path, monkeypatch):
    monkeypatch.setattr(fused_cpu, "CHUNK", 16 if num_seqs == 7 else fused_cpu.CHUNK)  # prefill in several calls
    spec = dict(VARIANTS.get(variant, {"arch": variant}))
    path = make_random_checkpoint(spec.pop("arch"), str(tmp_path), preset="tiny", seed=5, **spec)
    rng = random.Random(num_seqs)
    prompts = [[rng.randrange(512) for _ in range(rng.randint(1, 70))] for _ in range(num_seqs)]
    with LLM(path, kv_cache={"block_size": 8}, max_model_len=128, max_num_batched_tokens=512,
             forward="fused_cpu") as llm:
        engine, runner = llm.engine, llm.engine.executor
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=4))
        plan = engine.scheduler.schedule()
        assert len(plan.seqs) == num_seqs and plan.num_tokens == [len(p) for p in prompts]
        compare_step(runner, plan)
        engine.scheduler.update(plan, runner.execute(plan), 0.0)  # the prefill, through the C step
        engine.step()  # a decode step, so the cache holds C-written rows of both kinds
        plan = engine.scheduler.schedule()
        assert len(plan.seqs) == num_seqs and plan.num_tokens == [1] * num_seqs and plan.is_decode
        compare_step(runner, plan)


@pytest.mark.slow  # compile=true runs torch.compile's CPU compiler
def test_auto_picks_it_where_it_runs(tiny_qwen3_path):
    """forward=auto runs the C step where it can, and says why it passed over it elsewhere; eager's
    onednn=auto packs oneDNN's copy of the weights (the C step packs its own)."""
    def packed(llm):
        return any(getattr(m, "packed", None) is not None for m in llm.engine.executor.model.modules())

    with LLM(tiny_qwen3_path) as llm:
        assert llm.engine.config.forward.name == "fused_cpu" and not packed(llm)
        assert llm.engine.config.forward_choice.startswith("forward=auto chose fused_cpu (cpu, float32, tp=1")
    for overrides, why in ((dict(attention="sdpa"), "it computes attention=cpu's kernel"),
                           (dict(compile=True), "compile=true compiles the torch modules")):
        with LLM(tiny_qwen3_path, **overrides) as llm:
            config = llm.engine.config
            assert config.forward == EagerForward.Config(onednn=True) and packed(llm), overrides
            assert f"passed over fused_cpu: {why}" in config.forward_choice
    with LLM(tiny_qwen3_path, forward={"name": "eager", "onednn": False}) as llm:  # asked for: plain F.linear
        assert llm.engine.config.forward_choice is None and not packed(llm)


def test_long_prefill_through_torch_then_decode_in_c(tiny_qwen3_path, monkeypatch):
    """A prefill longer than forward.max_prefill_context runs through the torch modules (SDPA) and
    its decode in C: the two write the same cache, so the tokens stay Hugging Face's."""
    from tests.conftest import hf_greedy

    rng = random.Random(3)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (5, 40, 90)]
    calls = []
    with LLM(tiny_qwen3_path, kv_cache={"block_size": 8}, max_model_len=256, max_num_batched_tokens=512,
             forward={"name": "fused_cpu", "max_prefill_context": 20}) as llm:
        step = llm.engine.executor.forward_strategy
        runs = step.runs
        monkeypatch.setattr(step, "runs", lambda meta: calls.append(runs(meta)) or calls[-1])
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False)
    assert calls[0] is False and all(calls[1:])  # the prefill went to torch, every decode step to C
    assert [o.outputs[0].token_ids for o in outs] == hf_greedy(tiny_qwen3_path, prompts, 12)


def test_auto_passes_it_over_where_it_cannot_build(tiny_qwen3_path, monkeypatch):
    def cannot_build():
        raise ConfigError("forward=fused_cpu: compiling cpu_step.c failed")

    monkeypatch.setattr(fused_cpu, "kernel", cannot_build)
    with LLM(tiny_qwen3_path) as llm:
        assert llm.engine.config.forward.name == "eager"
        assert "passed over fused_cpu: forward=fused_cpu: compiling cpu_step.c failed" in llm.engine.config.forward_choice
    with pytest.raises(ConfigError, match="forward=fused_cpu cannot run here: forward=fused_cpu: compiling cpu_step.c failed"):
        LLM(tiny_qwen3_path, forward="fused_cpu")


def test_loading_the_c_kernels_leaves_the_process_floating_point_alone():
    """-ffast-math at link time would add gcc's crtfastmath.o, which turns on flush-to-zero for the
    whole process when the library loads: every float32 op then reads a subnormal as 0 (a temperature
    of 1e-40, hypothesis's float strategies...). The kernels are linked without it."""
    import subprocess
    import sys

    code = ("import torch; from nvllm.kernels import load_library\n"
            "for name in ('cpu_decode.c', 'cpu_step.c'): load_library(name, 'test', 'nothing')\n"
            "print(torch.tensor([1e-40]).mul(1.0).item() != 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "True", "loading the kernels turned on flush-to-zero for the process"
