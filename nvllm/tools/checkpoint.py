"""`python -m nvllm.tools.checkpoint ARCH OUT_DIR [--preset P] [--seed S] [--init unit]`: write a seeded
random-weight checkpoint of a registered architecture (for tests and throughput runs). It is marked random."""
import argparse
import json
from pathlib import Path

import torch

from nvllm import registry
from nvllm.models.weights import RANDOM_MARKER
from nvllm.plugins import load_plugins


INITS = ("transformers", "unit")


def make_random_checkpoint(arch: str, out_dir: str, preset: str = "tiny", seed: int = 0,
                           tokenizer_from: str | None = None, hf_config_class: str | None = None,
                           max_shard_size: str | None = None, init: str = "transformers", **overrides) -> str:
    """Write a seeded random-weight Hugging Face checkpoint of a registered architecture. It is
    marked random (a marker file and `nvllm_random_weights` in config.json). `max_shard_size`
    ("20KB"): split the weights into safetensors shards of at most that size, as large models ship.
    `init`: "transformers" (its own initialisation: matrices N(0, 0.02), norms 1, biases 0) or
    "unit" (`unit_init`)."""
    import transformers

    load_plugins()
    cls = registry.get("model", arch)
    if preset not in cls.random_presets:
        raise ValueError(f"{arch} has no random preset {preset!r}; presets: {', '.join(cls.random_presets)}")
    if init not in INITS:
        raise ValueError(f"init={init!r} is not allowed: use {' or '.join(INITS)}")
    config_class = getattr(transformers, hf_config_class or cls.hf_config_class)
    config = config_class(**{**cls.random_presets[preset], **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if init == "unit":
        unit_init(model, seed)
    out = Path(out_dir)
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    cfg = json.loads((out / "config.json").read_text())
    cfg["nvllm_random_weights"] = True
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / RANDOM_MARKER).write_text(f"random weights: arch={arch} preset={preset} seed={seed} init={init}\n")
    if tokenizer_from:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return str(out)


def unit_init(model, seed: int = 0) -> None:
    """Random weights under which every term of the computation moves the output: each matrix
    N(0, 1/fan_in) (fan_in: its last dimension) so a linear layer keeps its input's scale and
    activations stay of order 1 through every layer (softmax, SiLU and a router work in their
    non-linear range, and a scale dropped anywhere changes them); embedding rows of norm about 1, so
    the residual stream's first term is of the order of what each layer adds to it; norm weights
    U(0.5, 1.5) and biases N(0, 0.5), never at their identity values. transformers' own N(0, 0.02)
    leaves a tiny model's activations near zero, where attention is uniform and a dropped multiplier
    or bias changes no greedy token (issue 31)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied LM head is the embedding, listed once
            if param.dim() >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.5, generator=generator)
            else:
                param.uniform_(0.5, 1.5, generator=generator)


def main(argv=None):
    load_plugins()
    presets = {name: sorted(registry.get("model", name).random_presets) for name in registry.names("model")}
    parser = argparse.ArgumentParser(
        prog="python -m nvllm.tools.checkpoint", description=__doc__.split(":", 1)[1].strip(),
        epilog="presets: " + "; ".join(f"{a}: {', '.join(p)}" for a, p in presets.items()))
    parser.add_argument("arch", choices=registry.names("model"), help="registered architecture")
    parser.add_argument("out_dir", help="directory to write (Hugging Face format)")
    parser.add_argument("--preset", default="tiny", help="shape preset of the architecture (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-from", help="copy the tokenizer of this model directory")
    parser.add_argument("--init", choices=INITS, default="transformers",
                        help="transformers: its own initialisation (default); unit: activations of order 1 in "
                             "every layer, so every term moves the output (what ModelSuite tests on)")
    args = parser.parse_args(argv)
    path = make_random_checkpoint(args.arch, args.out_dir, args.preset, args.seed, args.tokenizer_from, init=args.init)
    print(f"wrote a RANDOM-WEIGHT {args.arch} checkpoint ({args.preset}, seed {args.seed}, init {args.init}) to {path}")


if __name__ == "__main__":
    main()
