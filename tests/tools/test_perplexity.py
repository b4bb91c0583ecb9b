"""python -m nvllm.tools.perplexity: its float32 perplexity is transformers' on the same chunks, a
run of the float32 model against itself differs in nothing, and a packed format is measured."""
import json
import math
from pathlib import Path

import torch

from nvllm.tools.perplexity import main

TEXT = Path(__file__).resolve().parents[2] / "experiments" / "data" / "alice-chapter1.txt"
CTX = 128


def transformers_perplexity(path: str, chunks: list[list[int]]) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for chunk in chunks:
            logprobs = torch.log_softmax(model(torch.tensor([chunk])).logits[0, len(chunk) // 2:-1].double(), -1)
            targets = torch.tensor(chunk[len(chunk) // 2 + 1:])
            nll -= float(logprobs.gather(1, targets[:, None]).sum())
            count += len(targets)
    return math.exp(nll / count)


def test_perplexity_kl_and_agreement(tiny_text_path, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "int8.json"
    main(["--text", str(TEXT), "--ctx", str(CTX), "--json", str(out), f"model.path={tiny_text_path}",
          "quantization=int8"])
    result = json.loads(out.read_text())
    tokens = AutoTokenizer.from_pretrained(tiny_text_path).encode(TEXT.read_text())
    assert tokens[0] != 1  # SmolLM2's tokenizer starts a text with no BOS: the chunks are the text's tokens
    chunks = [tokens[i:i + CTX] for i in range(0, len(tokens) - CTX + 1, CTX)]
    assert result["float32"]["chunks"] == len(chunks) and result["run"]["tokens_scored"] == len(chunks) * (CTX // 2 - 1)
    assert math.isclose(result["float32"]["perplexity"], transformers_perplexity(tiny_text_path, chunks), rel_tol=1e-5)
    run = result["run"]
    assert run["quantization"] == "int8" and run["forward"] == "fused_cpu"  # auto: the C step reads packed weights
    assert run["mean_kl_divergence"] > 0 and 0 < run["top1_agreement"] <= 1
    assert run["weight_bytes"] < result["float32"]["weight_bytes"]
    assert "quantization=int8: perplexity" in capsys.readouterr().out

    main(["--text", str(TEXT), "--ctx", str(CTX), "--json", str(out), f"model.path={tiny_text_path}"])
    same = json.loads(out.read_text())["run"]
    assert same["mean_kl_divergence"] == 0 and same["top1_agreement"] == 1
