"""The OpenMP wait policy nvllm sets before torch loads, and the start-up line's clause on threads."""
import os
import subprocess
import sys

from nvllm.kernels import threads

PROBE = ("import os, nvllm; from nvllm.kernels import threads; "
         "print(threads.chosen, os.environ.get('GOMP_SPINCOUNT'), threads.startup_clause('cpu'))")


def probe(**env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARS}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_short_spin_is_set_for_nvllm_and_not_passed_on_to_its_children():
    out = probe()
    assert out.startswith(f"{{'GOMP_SPINCOUNT': '{threads.SPINCOUNT}'}} None ")  # chosen, then removed again
    assert f"CPU threads (GOMP_SPINCOUNT={threads.SPINCOUNT})" in out


def test_the_environment_s_own_choice_is_kept():
    passive = probe(OMP_WAIT_POLICY="PASSIVE")
    assert passive.startswith("{} None ") and "(OMP_WAIT_POLICY=PASSIVE)" in passive
    assert "(GOMP_SPINCOUNT=5)" in probe(GOMP_SPINCOUNT="5")


def test_a_busy_machine_is_named_with_the_fix(monkeypatch):
    import torch

    monkeypatch.setattr(os, "getloadavg", lambda: (threads.cores() + 3.0, 0.0, 0.0))
    clause = threads.startup_clause("cpu")
    assert clause.startswith(f"{torch.get_num_threads()} CPU threads (")
    assert f"BUSY MACHINE: load average {threads.cores() + 3.0:.1f} on {threads.cores()} cores" in clause
    assert "OMP_NUM_THREADS=N" in clause
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert "BUSY" not in threads.startup_clause("cpu") and threads.startup_clause("cuda") == ""
