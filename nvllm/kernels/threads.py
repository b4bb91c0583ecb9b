"""How nvllm's CPU threads wait, and what the start-up line says about them.

torch and the C kernels share one OpenMP runtime: torch's bundled libgomp (the kernels' library
names libgomp.so.1, which resolves to the copy torch has already loaded). A fused_cpu step meets an
OpenMP barrier several times per layer. libgomp's default wait spins 300000 times before it
sleeps: fastest on an idle machine, but when another process holds a core the spinning thread
burns the time slice its partner needs, and a step becomes many scheduler quanta. Passive waiting
(sleep at once) survives a busy machine but wakes every barrier through the kernel. A short spin,
then sleep, keeps most of both: `SPINCOUNT`, chosen by measurement on this project's 2-core machine
idle and busy (experiments/results/2026-12-06-cpu-2core-epyc/threads/).

libgomp reads its wait policy once, when it loads, that is when torch is first imported:
`set_wait_policy` must run before that (nvllm/__init__.py calls it first thing)."""
import os
import sys

# GOMP_SPINCOUNT nvllm sets when neither it nor OMP_WAIT_POLICY is set (libgomp's default: 300000)
SPINCOUNT = 1000
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


chosen: dict[str, str] = {}  # what set_wait_policy chose for this process, for the start-up line


def set_wait_policy() -> None:
    """Import torch with a short spin, then sleep, at OpenMP barriers, unless the environment already
    chose a wait policy; a no-op once torch is imported (its libgomp has read the environment then).
    The variable is removed again after the import: it is nvllm's choice for its own process, not
    for the programs it starts (llama.cpp's OpenMP build, say, reads the same variable)."""
    if "torch" in sys.modules or any(var in os.environ for var in WAIT_VARS):
        return
    chosen["GOMP_SPINCOUNT"] = os.environ["GOMP_SPINCOUNT"] = str(SPINCOUNT)
    try:
        import torch  # noqa: F401  libgomp reads its environment as it loads, here
    finally:
        del os.environ["GOMP_SPINCOUNT"]


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def startup_clause(device: str) -> str:
    """The start-up line's clause on CPU threads ("" on a GPU): how many, how they wait, and a warning
    with the fix when the machine's load average already exceeds its cores."""
    if device != "cpu":
        return ""
    import torch

    env = {**{var: os.environ[var] for var in WAIT_VARS if var in os.environ}, **chosen}
    wait = ", ".join(f"{var}={value}" for var, value in env.items()) or "libgomp's default wait"
    text = f"{torch.get_num_threads()} CPU threads ({wait}); "
    try:
        load = os.getloadavg()[0]
    except OSError:
        return text
    if load > cores():
        text += (f"BUSY MACHINE: load average {load:.1f} on {cores()} cores, so steps are slower and vary "
                 f"(OMP_NUM_THREADS=N sets the threads); ")
    return text
