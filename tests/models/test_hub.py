"""Models by Hugging Face repo id, through huggingface_hub: LLM("org/name") and model.path=org/name
read the local cache (built here in the hub's own layout: models--org--name/refs/main and
snapshots/<commit>/), offline; a repo that is neither a directory nor cached is refused saying
where nvllm looked and what to do."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from nvllm.models.weights import is_repo_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_qwen3_path) -> str:
    cache = tmp_path_factory.mktemp("hf-hub")
    repo = cache / "models--tiny-org--tiny-qwen3"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_qwen3_path, repo / "snapshots" / COMMIT)
    return str(cache)


def python(code: str, hub_cache: str, cwd):
    env = {**os.environ, "HF_HUB_CACHE": hub_cache, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_repo_ids_are_told_from_paths():
    assert is_repo_id("Qwen/Qwen3-0.6B") and is_repo_id("tiny-org/tiny_qwen3.v2")
    assert not any(map(is_repo_id, ("/models/q", "./q/x", "~/q/x", "a/b/c", "qwen3", "a b/c")))


@pytest.mark.slow  # runs nvllm in fresh processes
def test_llm_by_repo_id_from_the_local_cache(hub_cache, tiny_qwen3_path, tmp_path):
    proc = python(f"""
        from nvllm import LLM, SamplingParams
        greedy = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
        with LLM("tiny-org/tiny-qwen3") as llm:
            by_id = llm.generate([[1, 2, 3]], greedy, use_tqdm=False)[0].outputs[0].token_ids
            print(llm.engine.model_path)
        with LLM({tiny_qwen3_path!r}) as llm:
            print(by_id == llm.generate([[1, 2, 3]], greedy, use_tqdm=False)[0].outputs[0].token_ids)
    """, hub_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, same = proc.stdout.split()[-2:]
    assert path.endswith(f"models--tiny-org--tiny-qwen3/snapshots/{COMMIT}") and same == "True"


@pytest.mark.slow  # runs nvllm in fresh processes
def test_model_path_repo_id_on_the_command_line(hub_cache, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": hub_cache, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "nvllm.run", "model=qwen3", "model.path=tiny-org/tiny-qwen3",
                           "workload=random_tiny", "workload.num_seqs=2", "workload.output_len=[2,3]",
                           "workload.max_token_id=500", "max_model_len=160", f"hydra.run.dir={tmp_path}/run"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["effective_config"]["model"]["resolved_path"].endswith(COMMIT)


def test_a_repo_neither_here_nor_cached_is_refused_saying_why(hub_cache, tmp_path):
    proc = python("""
        from nvllm import LLM
        LLM("no-org/no-model")
    """, hub_cache, tmp_path)
    assert proc.returncode != 0
    assert ("model.path='no-org/no-model' is no directory here, and the Hugging Face repo no-org/no-model is not in the local cache "
            f"(looked in {hub_cache}/models--no-org--no-model) and HF_HUB_OFFLINE=1 forbids a download") in proc.stderr
    assert "huggingface-cli download no-org/no-model" in proc.stderr
