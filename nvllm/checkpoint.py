"""`python -m nvllm.checkpoint ARCH OUT_DIR [--preset P] [--seed S]`: write a seeded random-weight
checkpoint of a registered architecture (for tests and throughput runs). It is marked random."""
import argparse

from nvllm import registry
from nvllm.models.weights import make_random_checkpoint
from nvllm.plugins import load_plugins


def main(argv=None):
    load_plugins()
    presets = {name: sorted(registry.get("model", name).random_presets) for name in registry.names("model")}
    parser = argparse.ArgumentParser(
        prog="python -m nvllm.checkpoint", description=__doc__.split(":", 1)[1].strip(),
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
