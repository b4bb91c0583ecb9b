"""forward=auto and the switches that narrow it: what each device gets, and the refusals."""
import subprocess
import sys

import pytest
import torch

from nvllm import registry
from nvllm.auto import AUTO
from nvllm.config import Config
from nvllm.errors import ConfigError
from nvllm.forward.base import ForwardTarget
from nvllm.plugins import load_plugins

load_plugins()


def target(device="cpu", attention="cpu", tp=1, compile=False, dtype=torch.float32, quantization="none"):
    return ForwardTarget(torch.device(device), dtype, tp, registry.get("model", "qwen3"), attention, compile,
                         quantization)


def choose(cudagraph=None, forward=AUTO, quantization=None, **where):
    """What Config.resolve decides for the forward family, without a model or a device
    (`quantization`: the format's Config)."""
    name = quantization.name if quantization else "none"
    return Config(cudagraph=cudagraph, forward=forward)._forward(target(quantization=name, **where), quantization)


def test_cpu_defaults_to_the_c_step_and_cuda_to_graphs():
    config, note = choose()
    assert config.name == "fused_cpu" and note == ("forward=auto chose fused_cpu (cpu, float32, tp=1, model=qwen3, "
                                                   "attention=cpu)")
    for dtype in (torch.bfloat16, torch.float16):  # 16-bit weights, float32 activations
        assert choose(dtype=dtype)[0].name == "fused_cpu"
    config, note = choose(device="cuda", attention="triton", dtype=torch.bfloat16)
    assert config.name == "cudagraph" and note.startswith("forward=auto chose cudagraph (cuda, bfloat16")


def test_cpu_picks_the_c_step_for_packed_formats_and_int8_activations_need_it():
    for fmt in ("int8", "int4", "gguf"):
        config, note = choose(quantization=registry.make_config("quantization", fmt))
        assert config.name == "fused_cpu" and note.endswith(f"attention=cpu, quantization={fmt})")
    int8_activations = registry.make_config("quantization", {"name": "int8", "activations": "int8"})
    with pytest.raises(ConfigError, match=r"forward=auto found nothing that runs here .*attention=sdpa.*eager: "
                                          r"quantization.activations=int8 multiplies int8 activations in "
                                          r"forward=fused_cpu's C step only"):
        choose(quantization=int8_activations, attention="sdpa")  # no C step here: nothing runs it
    with pytest.raises(ConfigError, match="forward=eager cannot run here: quantization.activations=int8"):
        choose(quantization=int8_activations, forward="eager")


@pytest.mark.parametrize("where, why", [
    (dict(attention="sdpa"), "fused_cpu: it computes attention=cpu's kernel and this run chose attention=sdpa"),
    (dict(tp=3), "fused_cpu: it runs one process and this run has tp=3"),
    (dict(compile=True), "fused_cpu: compile=true compiles the torch modules, which it does not run"),
    (dict(dtype=torch.float64), "fused_cpu: it is a CPU kernel (float32, bfloat16 or float16 weights) and this run "
                                "is float64 on cpu"),
])
def test_cpu_falls_back_to_eager_saying_why(where, why):
    config, note = choose(**where)
    assert config.name == "eager" and f"passed over {why}" in note


def test_cudagraph_switch_narrows_auto():
    config, note = choose(cudagraph=False, device="cuda", attention="triton")
    assert config.name == "eager" and "passed over cudagraph: cudagraph=false rules it out" in note
    config, note = choose(cudagraph=True, device="cuda", attention="triton")
    assert config.name == "cudagraph" and note is None  # as if named
    with pytest.raises(ConfigError, match="cudagraph=true cannot run here: decode CUDA graphs need a CUDA device"):
        choose(cudagraph=True)
    with pytest.raises(ConfigError, match="cudagraph=true asks for decode CUDA graphs and forward=eager runs none"):
        choose(cudagraph=True, forward="eager", device="cuda")
    with pytest.raises(ConfigError, match="forward=cudagraph and cudagraph=false contradict each other"):
        choose(cudagraph=False, forward="cudagraph", device="cuda")


def test_named_strategy_is_checked_and_its_autos_resolved():
    from nvllm.forward.eager import EagerForward

    config, note = choose(forward=EagerForward.Config())
    assert note is None and config == EagerForward.Config(onednn=torch.backends.mkldnn.is_available())
    config, _ = choose(forward=EagerForward.Config(), device="cuda")
    assert config.onednn is False  # oneDNN packs CPU matmuls only
    with pytest.raises(ConfigError, match="forward=fused_cpu cannot run here: it runs one process"):
        choose(forward="fused_cpu", tp=2)


def test_cudagraph_switch_values():
    assert [Config(cudagraph=v).cudagraph for v in ("auto", "true", "false", None, True, False)] == \
        [None, True, False, None, True, False]
    with pytest.raises(ConfigError, match="cudagraph='maybe' is not allowed: use auto, true or false"):
        Config(cudagraph="maybe")


def test_help_describes_every_forward_option(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nvllm.run", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert "forward: auto, cudagraph, eager, fused_cpu" in out
    for name in ("auto", "cudagraph", "eager", "fused_cpu"):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"forward={name}: "))
        assert len(line.split(": ", 1)[1]) > 20, line
