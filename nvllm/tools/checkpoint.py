"""`python -m nvllm.tools.checkpoint ARCH OUT_DIR [--preset P] [--seed S]`: write a seeded random-weight
checkpoint of a registered architecture (for tests and throughput runs). It is marked random."""
import argparse
import json
from pathlib import Path

import torch

from nvllm import registry
from nvllm.models.weights import RANDOM_MARKER
from nvllm.plugins import load_plugins


def make_random_checkpoint(arch: str, out_dir: str, preset: str = "tiny", seed: int = 0,
                           tokenizer_from: str | None = None, hf_config_class: str | None = None,
                           max_shard_size: str | None = None, **overrides) -> str:
    """Write a seeded random-weight Hugging Face checkpoint of a registered architecture. It is
    marked random (a marker file and `nvllm_random_weights` in config.json). `max_shard_size`
    ("20KB"): split the weights into safetensors shards of at most that size, as large models ship."""
    import transformers

    load_plugins()
    cls = registry.get("model", arch)
    if preset not in cls.random_presets:
        raise ValueError(f"{arch} has no random preset {preset!r}; presets: {', '.join(cls.random_presets)}")
    config_class = getattr(transformers, hf_config_class or cls.hf_config_class)
    config = config_class(**{**cls.random_presets[preset], **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    cfg = json.loads((out / "config.json").read_text())
    cfg["nvllm_random_weights"] = True
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / RANDOM_MARKER).write_text(f"random weights: arch={arch} preset={preset} seed={seed}\n")
    if tokenizer_from:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)
    return str(out)


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
    args = parser.parse_args(argv)
    path = make_random_checkpoint(args.arch, args.out_dir, args.preset, args.seed, args.tokenizer_from)
    print(f"wrote a RANDOM-WEIGHT {args.arch} checkpoint ({args.preset}, seed {args.seed}) to {path}")


if __name__ == "__main__":
    main()
