"""What holding bfloat16 panels in 12 bits (fused_cpu.py `code12`) buys the fused CPU step: engines in
one process, alternately with the plain 16-bit panels and the 12-bit ones, their captured decode step
(one sequence of the embedded SmolLM2, a 240-token context) called in turn, a few steps at a time as
a decode runs them, so that all see the same machine; also the bytes each holds and whether their
logits are equal.

    python experiments/bf16_12bit_ab.py --engines 4 --steps 200
"""
import argparse
import statistics

from hugepages_ab import capture_decode_steps, report, time_in_turn  # (experiments/, this script's directory)
from nvllm import LLM, SamplingParams
from nvllm.forward import fused_cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=int, default=4, help="engines, plain and 12-bit in turn")
    parser.add_argument("--steps", type=int, default=200, help="steps timed per engine")
    parser.add_argument("--run", type=int, default=5, help="steps in a row on one engine, as a decode runs them")
    args = parser.parse_args()
    if not fused_cpu.codes_bf16():
        raise SystemExit("this build of the C step does not read 12-bit panels (no AVX-512 VBMI)")
    call, captured = capture_decode_steps()
    prompt = {"prompt_token_ids": [(17 * i) % 10000 for i in range(239)]}
    sampling = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, logprobs=5)
    engines, logprobs, real = {}, {}, fused_cpu.codes_bf16
    try:
        for i in range(args.engines):
            twelve = i % 2 == 1
            fused_cpu.codes_bf16 = lambda twelve=twelve: twelve
            name = f"{'12-bit' if twelve else 'plain'} #{i}"
            engines[name] = LLM("smollm2", dtype="bfloat16")
            logprobs[name] = engines[name].generate([prompt], sampling, use_tqdm=False)[0].outputs[0].logprobs
    finally:
        fused_cpu.codes_bf16 = real
    for name, (strategy, _) in zip(engines, captured.items()):
        held = sum(t.nbytes for panels in strategy.held for t in panels.tensors)
        print(f"{name}: panels held {held / 2**20:.1f} MiB; logprobs equal to plain #0's: "
              f"{logprobs[name] == logprobs['plain #0']}")
    times = time_in_turn(call, engines, captured, args.steps, args.run)
    report(times)
    plain = statistics.median([x for n, t in times.items() if n.startswith("plain") for x in t])
    twelve = statistics.median([x for n, t in times.items() if n.startswith("12") for x in t])
    print(f"12-bit panels: the step {plain / twelve:.3f}x as fast (medians over the engines of each kind)")


if __name__ == "__main__":
    main()
