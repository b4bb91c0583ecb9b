"""nvllm-sjf: nvllm's scheduler contract, then the policy itself."""
import pytest

from nvllm import LLM, SamplingParams, registry
from nvllm.sequence import Sequence
from nvllm.plugins import load_plugins
from nvllm.testing import SchedulerSuite
from nvllm.testing.scheduler import run_step


class TestSJFConformance(SchedulerSuite):
    name = "sjf"
    configs = [{}, {"max_skips": 1}, {"max_skips": 0}]


def make(max_skips=64, max_num_seqs=1, num_blocks=64, block_size=4, budget=64):
    load_plugins()
    kv_cls = registry.get("kv_cache", "paged")
    kv = kv_cls(kv_cls.Config(block_size=block_size), num_blocks=num_blocks, block_size=block_size)
    sched_cls = registry.get("scheduler", "sjf")
    return sched_cls(sched_cls.Config(max_skips=max_skips), kv_cache=kv, max_num_seqs=max_num_seqs,
                     max_num_batched_tokens=budget, max_model_len=budget, eos_token_ids=frozenset())


def request(prompt_len, max_tokens, first_token=1):
    return Sequence(list(range(first_token, first_token + prompt_len)),
                    SamplingParams(max_tokens=max_tokens, ignore_eos=True), block_size=4)


def finish(sched, plan):
    """Stand in for the model: every sequence in the plan gets a token; return the finished ones."""
    return run_step(sched, plan, [7] * len(plan.seqs)).finished


def test_admits_the_shortest_job_first():
    sched = make()
    sizes = [(10, 20), (3, 2), (5, 9), (1, 30)]  # work left: 30, 5, 14, 31
    jobs = [request(n, m, first_token=100 * i) for i, (n, m) in enumerate(sizes)]
    for seq in jobs:
        sched.add(seq)
    order = []
    while not sched.is_finished():
        waiting = set(sched.waiting)
        plan = sched.schedule()
        order += [s.seq_id for s in plan.seqs if s in waiting]
        finish(sched, plan)
    assert order == [jobs[1].seq_id, jobs[2].seq_id, jobs[0].seq_id, jobs[3].seq_id]


def test_a_long_job_is_not_starved():
    sched = make(max_skips=2)
    long = request(8, 40)
    sched.add(long)
    admitted = []
    for i in range(6):  # a fresh short job arrives before every step
        sched.add(request(1, 1, first_token=100 + i))
        waiting = set(sched.waiting)
        plan = sched.schedule()
        admitted += [s for s in plan.seqs if s in waiting]
        finish(sched, plan)
        if long in admitted:
            break
    assert long in admitted and admitted.index(long) == 2, "overtaken twice, then admitted"


def test_without_a_skip_limit_short_jobs_keep_overtaking():
    sched = make(max_skips=0)
    long = request(8, 40)
    sched.add(long)
    for i in range(6):
        sched.add(request(1, 1, first_token=100 + i))
        finish(sched, sched.schedule())
    assert long in sched.waiting


def test_preempts_the_job_with_the_most_work_left():
    # 4 blocks of 4 tokens: two 8-token prompts fill 2 blocks each; each one's first decode needs a third
    sched = make(max_num_seqs=2, num_blocks=4)
    short, long = request(8, 2), request(8, 30, first_token=50)
    sched.add(long)
    sched.add(short)
    finish(sched, sched.schedule())  # prefill both (short first)
    plan = sched.schedule()
    assert sched.num_preemptions == 1 and long in sched.waiting and plan.seqs == [short]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("tiny-qwen3")), preset="tiny", seed=0)


def test_same_tokens_as_fcfs_and_short_requests_start_first(tiny_model):
    """Scheduling changes when tokens come, never which."""
    prompts = [[(7 * i + j) % 500 for j in range(n)] for i, n in enumerate((60, 3, 45, 8, 5))]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in (40, 2, 30, 4, 3)]
    runs = {}
    for policy in ("fcfs", "sjf"):
        # one admission per step and a small cache: order and preemption both differ between policies
        with LLM(tiny_model, scheduler=policy, max_num_seqs=1, kv_cache={"block_size": 16, "num_blocks": 8},
                 max_model_len=128, max_num_batched_tokens=128) as llm:
            runs[policy] = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in runs["sjf"]] == [o.outputs[0].token_ids for o in runs["fcfs"]]
    short, long = [1, 3, 4], [0, 2]
    sjf, fcfs = runs["sjf"], runs["fcfs"]
    assert max(sjf[i].metrics.ttft for i in short) < min(sjf[i].metrics.ttft for i in long)
    assert fcfs[0].metrics.ttft < min(fcfs[i].metrics.ttft for i in short)  # fcfs serves the long first prompt first
