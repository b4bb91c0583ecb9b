"""nvllm.tools.checkpoint's initialisations: transformers' own, and `unit` (what ModelSuite tests on),
under which every matrix keeps its input's scale and no norm weight or bias sits at its identity."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nvllm.tools.checkpoint import main, make_random_checkpoint


def test_unit_init_scales_every_matrix_by_its_fan_in(tmp_path):
    path = make_random_checkpoint("qwen3", str(tmp_path), hf_config_class="Qwen2Config", init="unit")  # q/k/v biases
    weights = load_file(str(Path(path) / "model.safetensors"))
    assert "nvllm_random_weights" in json.loads((Path(path) / "config.json").read_text())
    for name, w in weights.items():
        if w.dim() >= 2:
            assert w.std().item() == pytest.approx(w.shape[-1] ** -0.5, rel=0.1), name
        elif name.endswith("bias"):
            assert w.std().item() == pytest.approx(0.5, rel=0.3) and w.abs().min() > 0, name
        else:
            assert 0.5 <= w.min() and w.max() <= 1.5 and w.std() > 0.2, name
    assert any(name.endswith("q_proj.bias") for name in weights)


def test_the_default_is_transformers_own(tmp_path):
    weights = load_file(str(Path(make_random_checkpoint("llama", str(tmp_path))) / "model.safetensors"))
    assert weights["model.layers.0.mlp.down_proj.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(weights["model.norm.weight"], torch.ones(64))


def test_an_unknown_init_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(ValueError, match="init='xavier' is not allowed: use transformers or unit"):
        make_random_checkpoint("llama", str(tmp_path), init="xavier")
    main(["llama", str(tmp_path / "cli"), "--init", "unit"])
    assert "init unit" in capsys.readouterr().out
