"""Tensor parallelism for real: spawned gloo ranks on this CPU, same greedy tokens as tp=1 and
as Hugging Face, clean failure when a worker dies or raises, no port collisions."""
import os
import subprocess
import sys
import textwrap

import pytest

from nvllm import LLM, SamplingParams
from nvllm.config import ConfigError
from tests.conftest import hf_greedy
from tests.test_plugins import make_distribution

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def generate(path, prompts, **overrides):
    with LLM(path, max_model_len=256, max_num_batched_tokens=512, **overrides) as llm:
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outs], llm.engine.scheduler.num_preemptions


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_tp2_qwen3_matches_tp1_and_hf_under_preemption(tiny_qwen3_path, prefix_caching):
    import random

    rng = random.Random(5)
    base = [rng.randrange(512) for _ in range(40)]
    prompts = [base[:n] + [rng.randrange(512) for _ in range(k)] for n, k in ((40, 3), (40, 20), (17, 1), (5, 60))]
    want = hf_greedy(tiny_qwen3_path, prompts, 24)
    kv = {"block_size": 8, "num_blocks": 16, "prefix_caching": prefix_caching}
    tp1, pre1 = generate(tiny_qwen3_path, prompts, kv_cache=kv)
    tp2, pre2 = generate(tiny_qwen3_path, prompts, kv_cache=kv, tp=2)
    assert pre2 > 0 and pre1 == pre2  # preempted sequences were re-prefilled on every rank
    assert tp2 == tp1 == want


@pytest.mark.slow
def test_tp3_smollm2_matches_tp1(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for q in ("What is the capital of France?", "Say hi.")]
    tp1, _ = generate(smollm2_path, prompts, kv_cache={"block_size": 16})
    tp3, _ = generate(smollm2_path, prompts, kv_cache={"block_size": 16}, tp=3)
    assert tp3 == tp1


def test_tp2_on_smollm2_names_the_dimension(smollm2_path):
    with pytest.raises(ConfigError, match=r"tp=2 does not divide this model's num_attention_heads=9, "
                                          r"num_key_value_heads=3; .*tp in \[1, 3\] works"):
        LLM(smollm2_path, tp=2)


def script(code: str, tmp_path, env=None, timeout=180):
    path = tmp_path / "run.py"
    path.write_text("if __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(code), "    "))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=tmp_path)


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
def test_killed_worker_gives_clear_error_and_no_orphan(tmp_path, tiny_qwen3_path):
    proc = script(f"""
        import os, signal
        from nvllm import LLM, SamplingParams
        llm = LLM({tiny_qwen3_path!r}, tp=2)
        worker = llm.engine.workers.processes[0]
        os.kill(worker.pid, signal.SIGKILL)
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4), use_tqdm=False)[0]
        print("ERROR", out.outputs[0].finish_reason, out.error)
        print("ALIVE", worker.is_alive())
    """, tmp_path)
    assert "ERROR abort a tensor-parallel worker failed: rank 1 (exit code -9)" in proc.stdout, proc.stderr
    assert "ALIVE False" in proc.stdout


RAISING_BACKEND = '''
from dataclasses import dataclass
from nvllm import hookimpl
from nvllm.attention.sdpa import SDPABackend
from nvllm.distributed import tp_rank

class FailsOnRank1(SDPABackend):
    """sdpa, except that rank 1 raises on its seventh forward call: the engine's warm-up makes the first
    four (a prefill and a decode step, two layers each), the request's prefill the next two."""
    name = "fails_on_rank1"

    @dataclass
    class Config:
        name: str = "fails_on_rank1"

    calls = 0

    def forward(self, *args):
        FailsOnRank1.calls += 1
        if tp_rank() == 1 and FailsOnRank1.calls > 6:
            raise RuntimeError("injected failure on rank 1")
        return super().forward(*args)

@hookimpl
def register_attention_backends(register):
    register(FailsOnRank1)
'''


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
def test_raising_worker_reports_its_traceback(tmp_path, tiny_qwen3_path):
    site = make_distribution(tmp_path / "site", name="nvllm-failing", module="nvllm_failing", body=RAISING_BACKEND,
                             ep_name="failing")
    proc = script(f"""
        from nvllm import LLM, SamplingParams
        llm = LLM({tiny_qwen3_path!r}, tp=2, attention="fails_on_rank1")
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4), use_tqdm=False)[0]
        print("ERROR", out.outputs[0].finish_reason, out.error)
        print("WORKERS", llm.engine.workers)
    """, tmp_path, env={"PYTHONPATH": str(site)})
    assert "ERROR abort a tensor-parallel worker failed: rank 1" in proc.stdout, proc.stderr
    assert "raised while running a step" in proc.stdout
    assert "RuntimeError: injected failure on rank 1" in proc.stdout
    assert "WORKERS None" in proc.stdout


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
def test_two_tp_runs_at_once_do_not_collide(tmp_path, tiny_qwen3_path):
    code = f"""
        from nvllm import LLM, SamplingParams
        with LLM({tiny_qwen3_path!r}, tp=2) as llm:
            print("TOKENS", llm.generate([[4, 5, 6]], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0].outputs[0].token_ids)
    """
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "run.py").write_text("if __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(code), "    "))
    procs = [subprocess.Popen([sys.executable, "run.py"], cwd=tmp_path / d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for d in ("a", "b")]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    tokens = [next(line for line in o.splitlines() if line.startswith("TOKENS")) for o, _ in outs]
    assert tokens[0] == tokens[1]


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
def test_cli_tp2(tmp_path, tiny_qwen3_path):
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "model=qwen3", f"model.path={tiny_qwen3_path}", "tp=2",
                           "cudagraph=false", "workload=random", "workload.num_seqs=3", "workload.input_len=[3,9]",
                           "workload.output_len=[3,5]", "workload.max_token_id=500", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    effective = metrics["effective_config"]
    assert effective["tp"] == 2 and effective["cudagraph"] is False and effective["forward"]["name"] == "eager"
    assert "passed over fused_cpu: it runs one process and this run has tp=2" in effective["forward_auto"]


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
def test_torchrun_launch(tmp_path, tiny_qwen3_path):
    """Ranks started by torchrun (as across machines): nothing spawned, rank 0 runs the workload."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "nvllm.run", "model=qwen3", f"model.path={tiny_qwen3_path}", "tp=2", "workload=random",
                           "workload.num_seqs=3", "workload.input_len=[3,9]", "workload.output_len=[3,5]",
                           "workload.max_token_id=500", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("3 requests (0 rejected)") == 1  # only rank 0 ran the workload
