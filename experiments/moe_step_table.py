"""SIMULATED: the roofline's decode step of a mixture of experts against its batch size, tensor
against expert parallelism (docs/simulation.md#a-mixture-of-experts). Prints a Markdown table:
per batch B, the experts touched per sparse layer, the busiest rank's expert weights read, and the
step's time, for each tp and placement.

    python experiments/moe_step_table.py --model qwen3_moe --shape qwen3-30b-a3b --hardware h200 --tp 2 4
"""
import argparse

from transformers import AutoConfig

from nvllm.models.weights import shape_path
from nvllm.plugins import load_plugins
from nvllm.simulation.cost import ModelDims, RooflineCost, StepShape
from nvllm.simulation.hardware import hardware


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen3_moe")
    parser.add_argument("--shape", default="qwen3-30b-a3b")
    parser.add_argument("--hardware", default="h200")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tp", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--context", type=int, default=1024, help="each decoding sequence's context (tokens)")
    args = parser.parse_args(argv)
    load_plugins()
    dims = ModelDims.of(AutoConfig.from_pretrained(shape_path(args.model, args.shape)))
    hw = hardware(args.hardware)
    costs = {(tp, ep): RooflineCost(dims, hw, args.dtype, tp, ep) for tp in args.tp for ep in (False, True)}
    expert_gb = dims.expert_params * costs[args.tp[0], False].bytes * dims.sparse_layers / 1e9
    print(f"SIMULATED (roofline of {hw.name}, uncalibrated, {args.dtype}): {args.model} {args.shape}, "
          f"{dims.params / 1e9:.3g}B parameters, {dims.active_params / 1e9:.3g}B active; decode steps, "
          f"context {args.context} each\n")
    head = ["B", "experts touched / layer"] + [f"tp={tp}{' EP' if ep else ''}: experts GB read, step ms"
                                               for tp, ep in costs]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for b in args.batches:
        step = StepShape.synthetic([], [args.context] * b)
        cells = [f"{cost.experts_read(b)[0] * expert_gb:.2f}, {cost.step_seconds(step) * 1e3:.2f}" for cost in costs.values()]
        print(f"| {b} | {dims.experts_touched(b):.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
