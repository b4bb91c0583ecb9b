"""SchedulerSuite: random workloads run to completion within every limit."""
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from nvllm import registry
from nvllm.sampling_params import SamplingParams
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.step import StepPlan, StepResult, StepUpdate

from nvllm.testing.common import ComponentSuite


EOS = 0


def run_step(sched, plan: StepPlan, tokens: list, now: float = 0.0) -> StepUpdate:
    """What the engine does with a plan's result: `tokens`, one per plan sequence (a token id, or a
    verified run after drafts), are what the model sampled; an entry for a sequence that samples
    nothing this step (a prefill chunk) is ignored."""
    return sched.update(plan, StepResult([t if s else None for t, s in zip(tokens, plan.samples)]), now)


@dataclass(frozen=True)
class Workload:
    """A synthetic request stream; no model runs: sampled tokens are random."""

    num_seqs: int
    prompt_len: tuple[int, int]
    max_tokens: tuple[int, int]
    block_size: int = 4
    num_blocks: int = 64
    max_num_seqs: int = 8
    # also max_model_len: the engine requires the budget to hold a whole recomputed sequence
    max_num_batched_tokens: int = 64
    # requests arrive spread over this many steps (0: all before the first step)
    arrival_steps: int = 0
    # chance that a sampled token is EOS (half the requests ignore it)
    eos_chance: float = 0.0
    # prompts reuse prefixes of earlier prompts, so the allocator finds prefix hits
    shared_prefixes: bool = False
    # requests get random priorities 0..2 (for priority-aware policies)
    priorities: bool = False


WORKLOADS = {
    "roomy": Workload(12, (1, 40), (1, 12), block_size=8, num_blocks=200, max_num_seqs=4),
    "preemption": Workload(10, (1, 30), (5, 30), num_blocks=16),
    "one-at-a-time": Workload(6, (1, 20), (1, 8), max_num_seqs=1),
    "long-prompts": Workload(8, (30, 63), (1, 4), num_blocks=40),
    "shared-prefixes": Workload(16, (1, 40), (1, 10), num_blocks=40, shared_prefixes=True, arrival_steps=20),
    "arrivals-eos-priorities": Workload(16, (1, 30), (1, 30), num_blocks=30, arrival_steps=30, eos_chance=0.2,
                                        priorities=True),
}


class SchedulerSuite(ComponentSuite):
    """Driven through synthetic workloads, without and with speculative decoding (drafts of random
    length in the slots each step reserves, random runs of them accepted): never more than
    max_num_seqs sequences or max_num_batched_tokens tokens (drafts included) in a step, slots
    reserved only for decoding sequences, never a request lost or finished twice, every scheduled
    sequence has cache blocks for what it computes and drafts, and every block is free at the end."""

    family = "scheduler"
    # the allocator the scheduler runs against
    kv_cache: str = "paged"

    def build(self, config, w: Workload):
        kv_config = registry.get("kv_cache", self.kv_cache).Config(block_size=w.block_size)
        kv = registry.build("kv_cache", kv_config, num_blocks=w.num_blocks, block_size=w.block_size)
        return registry.build("scheduler", config, kv_cache=kv, max_num_seqs=w.max_num_seqs,
                              max_num_batched_tokens=w.max_num_batched_tokens,
                              max_model_len=w.max_num_batched_tokens, eos_token_ids=frozenset({EOS}))

    @pytest.mark.parametrize("lookahead", [0, 3], ids=["no-drafts", "drafts"])
    @pytest.mark.parametrize("seed", [0, 1])
    @pytest.mark.parametrize("workload", WORKLOADS)
    def test_workload_runs_to_completion_within_limits(self, config, workload, seed, lookahead):
        w = WORKLOADS[workload]
        rng = random.Random(seed)
        sched = self.build(config, w)
        requests = self.requests(w, rng)
        arrivals = sorted((rng.randrange(w.arrival_steps + 1), i) for i in range(w.num_seqs))
        added, finished, step = [], {}, 0
        step_limit = 50 * sum(len(s) + s.sampling_params.max_tokens for s in requests)
        while len(finished) < w.num_seqs:
            while arrivals and arrivals[0][0] <= step:
                seq = requests[arrivals.pop(0)[1]]
                sched.add(seq)
                added.append(seq)
            step += 1
            assert step < step_limit, "the scheduler stopped making progress"
            if sched.is_finished():
                assert len(finished) == len(added), "is_finished() while requests are pending"
                continue
            plan = sched.schedule(lookahead)  # lookahead: what the engine has the drafter say
            if plan.lookahead:  # a drafter: any number of tokens up to the slots reserved
                plan.drafts = [[rng.randrange(1, 100) for _ in range(rng.randint(0, n))] for n in plan.lookahead]
            self.check_step(sched, w, plan, lookahead, added, finished)
            tokens = []
            for drafts in plan.drafts or [[]] * len(plan.seqs):  # verification: a prefix of the drafts, then one token more
                token = EOS if rng.random() < w.eos_chance else rng.randrange(1, 100)
                tokens.append(drafts[:rng.randint(0, len(drafts))] + [token] if drafts else token)
            for seq in run_step(sched, plan, tokens).finished:
                assert seq.seq_id not in finished, f"request {seq.seq_id} finished twice"
                assert seq.status == SequenceStatus.FINISHED and not seq.block_table
                finished[seq.seq_id] = seq
            self.check_places(sched, added, finished)
        assert sched.is_finished()
        assert sched.kv_cache.num_free_blocks == w.num_blocks, "cache blocks still held after every request finished"
        for seq in requests:
            sp = seq.sampling_params
            if seq.finish_reason == "stop":
                assert not sp.ignore_eos and seq.token_ids[-1] == EOS
            else:
                assert seq.finish_reason in ("length", "max_model_len")
                assert seq.num_completion_tokens == sp.max_tokens or len(seq) == w.max_num_batched_tokens

    @staticmethod
    def requests(w: Workload, rng: random.Random) -> list[Sequence]:
        max_len, prompts, seqs = w.max_num_batched_tokens, [], []
        for _ in range(w.num_seqs):
            prompt = [rng.randrange(1, 100) for _ in range(rng.randint(*w.prompt_len))]
            if w.shared_prefixes and prompts and rng.random() < 0.7:
                base = rng.choice(prompts)
                prompt = base[:rng.randint(1, len(base))] + prompt
            prompt = prompt[:max_len - 1]
            prompts.append(prompt)
            max_tokens = rng.randint(*w.max_tokens)
            # what the engine admits: a request whose final length fits the whole cache
            while max_tokens > 1 and -(-min(len(prompt) + max_tokens, max_len) // w.block_size) > w.num_blocks:
                max_tokens -= 1
            sp = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=not w.eos_chance or rng.random() < 0.5)
            seqs.append(Sequence(prompt, sp, w.block_size, priority=rng.randrange(3) if w.priorities else 0))
        return seqs

    @staticmethod
    def check_step(sched, w: Workload, plan: StepPlan, lookahead: int, added, finished):
        scheduled = plan.seqs
        assert scheduled, "the scheduler picked nothing while requests are pending"
        assert len(scheduled) <= w.max_num_seqs, f"{len(scheduled)} sequences > max_num_seqs={w.max_num_seqs}"
        assert len({s.seq_id for s in scheduled}) == len(scheduled), "a sequence scheduled twice in one step"
        assert len(plan.num_tokens) == len(plan.samples) == len(scheduled), "a plan's lists differ in length"
        slots = plan.lookahead or [0] * len(scheduled)
        drafts = plan.drafts or [[]] * len(scheduled)
        num_tokens = plan.total_tokens + sum(map(len, drafts))
        assert num_tokens <= w.max_num_batched_tokens, f"{num_tokens} tokens > max_num_batched_tokens"
        assert not plan.is_decode or all(n == 1 and s.num_tokens - s.num_computed_tokens == 1
                                         for s, n in zip(scheduled, plan.num_tokens)), "a decode plan runs more"
        running = {id(s) for s in sched.running}
        live = [s for s in added if s.seq_id not in finished and s.block_table]
        for seq, n, samples, k, d in zip(scheduled, plan.num_tokens, plan.samples, slots, drafts):
            assert seq.status == SequenceStatus.RUNNING and id(seq) in running, "scheduled but not running"
            assert 1 <= n <= len(seq) - seq.num_computed_tokens, "bad num_tokens in the plan"
            assert samples == (seq.num_computed_tokens + n == len(seq)), "samples is not whether the prompt completes"
            assert k <= lookahead, "more slots than the lookahead asked for"
            if k:
                assert len(seq) - seq.num_computed_tokens == 1, "slots for drafts reserved mid-prefill"
                assert len(seq) + k < w.max_num_batched_tokens, "drafts past max_model_len"
            end = seq.num_computed_tokens + n + len(d)
            assert len(seq.block_table) * w.block_size >= end, "scheduled tokens without cache blocks"
            written = {seq.block_table[p // w.block_size] for p in range(seq.num_computed_tokens, end)}
            for other in live:
                if other is not seq:
                    assert not written & set(other.block_table), "a step writes a block another sequence holds"
        held = {b for s in live for b in s.block_table}
        assert len(held) + sched.kv_cache.num_free_blocks == w.num_blocks, "cache blocks leaked"

    @staticmethod
    def check_places(sched, added, finished):
        """Every request is in exactly one place: waiting, running or finished."""
        places = Counter(s.seq_id for s in list(sched.waiting) + list(sched.running))
        assert all(n == 1 for n in places.values()), "a request is queued twice"
        assert not places.keys() & finished.keys(), "a finished request is still queued"
        lost = {s.seq_id for s in added} - places.keys() - finished.keys()
        assert not lost, f"requests {sorted(lost)} were lost"
        for seq in sched.waiting:
            assert seq.status == SequenceStatus.WAITING
