"""What a build flag of the C kernels changes in the fused CPU step: two engines in one process, the
second with its kernels compiled with extra flags (NVLLM_KERNEL_FLAGS, nvllm/kernels/__init__.py),
their captured decode step (one sequence of the embedded SmolLM2, at a chosen context) called
alternately, a few steps at a time as a decode runs them, so that both see the same machine.

    python experiments/kernel_flags_ab.py --flags=-DAHEAD=0 --dtype bfloat16 --context 240  # without the KV prefetch
    python experiments/kernel_flags_ab.py --flags=-DSKIP_LINEAR                              # all but the matmuls
"""
import argparse
import os
import statistics

from hugepages_ab import capture_decode_steps, report, time_in_turn  # (experiments/, this script's directory)
from nvllm import LLM, SamplingParams
from nvllm.forward import fused_cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", required=True, help="the second engine's extra compiler flags, e.g. --flags=-DAHEAD=0")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--context", type=int, default=240, help="tokens in the cache at the captured step")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--run", type=int, default=5, help="steps in a row on one engine, as a decode runs them")
    args = parser.parse_args()
    call, captured = capture_decode_steps()
    prompt = {"prompt_token_ids": [(17 * i) % 10000 for i in range(args.context - 1)]}
    engines, flags = {}, os.environ.get("NVLLM_KERNEL_FLAGS", "")
    for name, extra in (("default build", ""), (args.flags, args.flags)):
        os.environ["NVLLM_KERNEL_FLAGS"] = f"{flags} {extra}".strip()
        fused_cpu.kernel.cache_clear()  # the step compiled (or found in the kernel cache) with these flags
        engines[name] = LLM("smollm2", dtype=args.dtype)
        engines[name].generate([prompt], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True), use_tqdm=False)
    os.environ["NVLLM_KERNEL_FLAGS"] = flags
    times = time_in_turn(call, engines, captured, args.steps, args.run)
    report(times, f"{args.dtype}, context {args.context}, ")
    default, other = (statistics.median(t) for t in times.values())
    print(f"{args.dtype}, context {args.context}: the default build {other / default:.3f}x as fast as {args.flags} (median step)")


if __name__ == "__main__":
    main()
