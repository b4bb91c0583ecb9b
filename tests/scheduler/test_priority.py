"""PriorityScheduler: admission by priority, the lowest priority preempted first. Driven without a
model for its policy and invariants, and through the engine against Hugging Face greedy tokens
(helpers from test_chunked.py)."""
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nvllm.sequence import Sequence
from nvllm.kv_cache.paged import PagedBlockManager
from nvllm.sampling_params import SamplingParams
from nvllm.scheduler.priority import PriorityScheduler, rank
from nvllm.testing import SchedulerSuite
from nvllm.testing.scheduler import run_step
from tests.scheduler.test_chunked import MODELS, assert_same, cases, drive, generate, reference  # noqa: F401
from tests.scheduler.test_fcfs import EOS, workloads


def make_scheduler(num_blocks, block_size, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64,
                   prefix_caching=False, **config) -> PriorityScheduler:
    kv = PagedBlockManager(PagedBlockManager.Config(block_size=block_size, prefix_caching=prefix_caching),
                           num_blocks=num_blocks, block_size=block_size)
    return PriorityScheduler(PriorityScheduler.Config(**config), kv_cache=kv, max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                             eos_token_ids=frozenset({EOS}))


def add(sched, prompt, max_tokens, priority) -> Sequence:
    seq = Sequence(list(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True), sched.kv_cache.block_size,
                   priority)
    sched.add(seq)
    return seq


def step(sched):
    plan = sched.schedule()
    run_step(sched, plan, [1] * len(plan.seqs))
    return plan.seqs


class TestPriorityConformance(SchedulerSuite):
    name = "priority"
    configs = [{}, {"preempt_for_admission": False}]


# -- policy --------------------------------------------------------------------------------------

def test_admission_by_priority_then_arrival():
    sched = make_scheduler(num_blocks=32, block_size=4, max_num_seqs=2)
    low, urgent, mid, urgent2 = (add(sched, [i], max_tokens=3, priority=p) for i, p in enumerate([2, 0, 1, 0]))
    assert step(sched) == [urgent, urgent2]
    assert step(sched) == [mid, low]
    assert step(sched) == [urgent, urgent2], "decode: the most urgent first when max_num_seqs cuts the batch"


def test_decode_preempts_the_lowest_priority_not_the_newest():
    sched = make_scheduler(num_blocks=3, block_size=2)
    a = add(sched, [1, 2], max_tokens=3, priority=0)
    low = add(sched, [3], max_tokens=3, priority=5)
    new = add(sched, [4], max_tokens=3, priority=1)
    assert step(sched) == [a, new, low]  # by priority; 3 blocks taken
    seqs = sched.schedule().seqs  # a needs a fourth block
    assert seqs == [a, new] and list(sched.waiting) == [low] and sched.num_preemptions == 1


def test_urgent_arrival_preempts_lower_priority_running():
    sched = make_scheduler(num_blocks=4, block_size=2)
    low = add(sched, [1, 2, 3, 4, 5], max_tokens=2, priority=3)
    step(sched)
    urgent = add(sched, [6, 7, 8], max_tokens=2, priority=0)
    assert sched.schedule().seqs == [urgent] and list(sched.waiting) == [low] and sched.num_preemptions == 1


@pytest.mark.parametrize("config, priority", [({}, 3), ({"preempt_for_admission": False}, 0)])
def test_no_admission_preemption_between_equals_or_when_off(config, priority):
    sched = make_scheduler(num_blocks=4, block_size=2, **config)
    running = add(sched, [1, 2, 3, 4, 5], max_tokens=2, priority=3)
    step(sched)
    waiting = add(sched, [6, 7, 8], max_tokens=2, priority=priority)
    assert sched.schedule().seqs == [running] and list(sched.waiting) == [waiting] and sched.num_preemptions == 0


# -- random workloads ----------------------------------------------------------------------------

@st.composite
def prioritised_workloads(draw):
    w = draw(workloads())
    w["priorities"] = draw(st.lists(st.integers(0, 2), min_size=len(w["requests"]), max_size=len(w["requests"])))
    w["preempt_for_admission"] = draw(st.booleans())
    return w


def check_priority(sched, plan, before):
    """Whatever was chosen outranks whatever waits or was preempted; in a decode step, whatever
    still runs unscheduled ranks after every scheduled sequence."""
    seqs = plan.seqs
    worst_scheduled = max(rank(s) for s in seqs)
    victims = [s for s in before["running"] if s in sched.waiting]
    assert all(rank(v) > worst_scheduled for v in victims), "a preempted request outranks a scheduled one"
    if any(s in before["waiting"] for s in seqs):
        assert all(rank(w) > worst_scheduled for w in sched.waiting), "admitted out of priority order"
    else:
        idle = [s for s in sched.running if s not in seqs]
        assert all(rank(s) > worst_scheduled for s in idle), "a more urgent running request was left out"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[p for p in Phase if p != Phase.explain])
@given(prioritised_workloads())
def test_random_workloads_run_to_completion(w):
    sched = make_scheduler(num_blocks=w["num_blocks"], block_size=w["block_size"], max_num_seqs=w["max_num_seqs"],
                           max_num_batched_tokens=w["max_num_batched_tokens"], max_model_len=w["max_model_len"],
                           prefix_caching=w["prefix_caching"], preempt_for_admission=w["preempt_for_admission"])
    drive(sched, w, priorities=w["priorities"], check=check_priority)


# -- parity with Hugging Face --------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_parity_under_priority_preemption(cases, model, prefix_caching):  # noqa: F811
    path, prompts = cases[model]
    prompts = prompts + [prompts[-1][:40] + prompts[0]]  # a prefix hit, when caching is on
    longest = max(len(p) for p in prompts) + 20
    num_blocks = -(-longest // 16) + 3  # the longest request fits alone, the batch does not
    # the longest arrives late and most urgent: it must preempt lower-priority requests to start
    late = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    priorities = [len(prompts) - i for i in range(len(prompts))]
    priorities[late] = -1
    got, steps, preemptions = generate(path, prompts, priorities=priorities, late=[late], scheduler="priority",
                                       kv_cache={"block_size": 16, "num_blocks": num_blocks,
                                                 "prefix_caching": prefix_caching})
    assert preemptions > 0
    first_admitted = [p for *_, p in steps[0]]
    assert first_admitted == sorted(first_admitted), "the first step admits the most urgent first"
    assert any(p == -1 for *_, p in steps[3]), "the urgent late arrival is admitted at once, by preemption"
    assert_same(got, reference(path, prompts))
