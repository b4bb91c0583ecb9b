"""What 2 MiB pages buy the fused CPU step: two engines in one process, one with the weights in huge
pages (nvllm/kernels/hugepages.py) and one without, their captured decode step (one
sequence, the embedded SmolLM2) called alternately, so that both see the same machine.

    python experiments/hugepages_ab.py bfloat16 --steps 200
    python experiments/hugepages_ab.py gguf=q4_0:a8      # needs the llama.cpp q4_0 file (nvllm.tools.bench makes it)
"""
import argparse
import statistics
import time

from nvllm import LLM, SamplingParams
from nvllm.forward.fused_cpu import FusedCPUForward
from nvllm.kernels import hugepages


def options(variant: str) -> dict:
    """LLM() overrides for a variant: a dtype, or a format [=llama.cpp file type] [:a8]."""
    if variant in ("float32", "bfloat16", "float16"):
        return dict(dtype=variant)
    name, _, weights = variant.removesuffix(":a8").partition("=")
    quantization = {"name": name}
    if weights:  # the file llama.cpp's quantizer writes (nvllm.tools.bench's gguf=TYPE)
        from nvllm.tools.bench_peers import llamacpp
        quantization["file"] = str(llamacpp.gguf_path(weights))
    if variant.endswith(":a8"):
        quantization["activations"] = "int8"
    return dict(quantization=quantization)


def capture_decode_steps():
    """From here on, each fused CPU step keeps its first decode call's inputs, {strategy: (input_ids,
    positions, meta)}, to be called again; returns the unpatched call and that dict."""
    call, captured = FusedCPUForward.__call__, {}

    def capture(self, input_ids, positions, meta):
        if meta.is_decode and self not in captured:
            captured[self] = (input_ids.clone(), positions.clone(), meta)
        return call(self, input_ids, positions, meta)

    FusedCPUForward.__call__ = capture
    return call, captured


def time_in_turn(call, names, captured, steps: int, run: int = 1) -> dict[str, list[float]]:
    """Each engine's captured decode step (`names` in the order their engines were built) called
    `steps` times, `run` steps in a row on one engine before the next: {name: seconds per step}."""
    times = {name: [] for name in names}
    for _ in range(steps // run):
        for name, (strategy, (ids, positions, meta)) in zip(names, captured.items()):
            for _ in range(run):
                start = time.perf_counter()
                call(strategy, ids, positions, meta)
                times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], label: str = "") -> None:
    """Each engine's median step and quartiles."""
    for name, t in times.items():
        q = statistics.quantiles(t)
        print(f"{label}{name}: decode step median {statistics.median(t) * 1e3:.3f} ms, "
              f"quartiles {q[0] * 1e3:.3f}-{q[2] * 1e3:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", help="float32, bfloat16, float16, int8, int4, gguf=q4_0 ... (:a8: int8 activations)")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    call, captured = capture_decode_steps()
    advice, engines = hugepages._ADVICE, {}
    for name in ("4 KiB pages", "2 MiB pages"):
        hugepages._ADVICE = advice if name == "2 MiB pages" else None  # None: hugepages changes nothing
        engines[name] = LLM("smollm2", kv_cache={"num_blocks": 8}, **options(args.variant))
        engines[name].generate(["The history of the city of " * 20],
                               SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    hugepages._ADVICE = advice
    times = time_in_turn(call, engines, captured, args.steps)
    report(times, f"{args.variant} ")
    ratio = statistics.median(times["4 KiB pages"]) / statistics.median(times["2 MiB pages"])
    print(f"{args.variant}: 2 MiB pages {ratio:.3f}x as fast (median step)")


if __name__ == "__main__":
    main()
