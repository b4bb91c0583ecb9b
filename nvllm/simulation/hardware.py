"""The hardware a roofline cost model knows: one entry per device, per-device figures.

GPU figures are the vendors' data-sheet numbers (SXM parts, dense, no sparsity) and the fractions
of them a kernel reaches are assumptions, which is why a run on them is labelled uncalibrated.
The `cpu` entry is this project's reference machine, measured with
`python -m nvllm.tools.profile --hardware` (experiments/results/2026-12-03-cpu-2core-epyc/simulation/hardware.md):
achieved figures, so its fractions are 1."""
from dataclasses import dataclass, field

from nvllm.errors import ConfigError


@dataclass(frozen=True)
class Hardware:
    name: str
    # "gpu" (KV cache sized from memory less weights and activations) or "cpu" (as a CPU run sizes it)
    kind: str
    # memory of one device, GiB
    memory_gib: float
    # memory bandwidth, bytes/s
    memory_bandwidth: float
    # dense matmul FLOP/s by dtype name; a dtype missing here cannot be simulated on this entry
    flops: dict = field(default_factory=dict)
    # fractions of memory_bandwidth and flops a step's kernels reach (assumed for GPUs)
    bandwidth_efficiency: float = 1.0
    flops_efficiency: float = 1.0
    # device-to-device bandwidth one way (NVLink), bytes/s, and the latency of one all-reduce, s
    link_bandwidth: float = 0.0
    allreduce_latency: float = 0.0
    # dtype a run on this entry uses when forward.dtype is auto
    default_dtype: str = "bfloat16"
    # where the figures come from
    source: str = ""


TB, GB, TFLOPS = 1e12, 1e9, 1e12
_GPU_ASSUMED = dict(bandwidth_efficiency=0.85, flops_efficiency=0.7, allreduce_latency=10e-6, kind="gpu")

HARDWARE = {h.name: h for h in (
    Hardware("a100", memory_gib=80.0, memory_bandwidth=2.039 * TB,
             flops={"bfloat16": 312 * TFLOPS, "float16": 312 * TFLOPS, "float32": 19.5 * TFLOPS},
             link_bandwidth=300 * GB, source="NVIDIA A100 SXM4 80GB data sheet", **_GPU_ASSUMED),
    Hardware("h100", memory_gib=79.6, memory_bandwidth=3.35 * TB,
             flops={"bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS, "float32": 67 * TFLOPS},
             link_bandwidth=450 * GB, source="NVIDIA H100 SXM5 80GB data sheet", **_GPU_ASSUMED),
    Hardware("h200", memory_gib=140.4, memory_bandwidth=4.8 * TB,
             flops={"bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS, "float32": 67 * TFLOPS},
             link_bandwidth=450 * GB, source="NVIDIA H200 SXM 141GB data sheet", **_GPU_ASSUMED),
    Hardware("cpu", kind="cpu", memory_gib=23.5, memory_bandwidth=21.9 * GB, flops={"float32": 46.7e9},
             default_dtype="float32", source="AMD EPYC (Zen 3) VM, 2 cores, 2 threads, measured 2026-12-03 under "
                                             "other load (a lower bound): see the module docstring"),
)}


def hardware(name: str) -> Hardware:
    try:
        return HARDWARE[name.lower()]
    except KeyError:
        raise ConfigError(f"forward.hardware={name!r} is not in the hardware table; use one of "
                          f"{', '.join(HARDWARE)} (nvllm/simulation/hardware.py), or a profile measured on it "
                          f"(python -m nvllm.tools.profile)") from None
