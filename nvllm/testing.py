"""Conformance suites, one per component family, that a plugin's tests subclass (the way Hydra's
launcher plugins subclass `LauncherTestSuite`). Set `name`; pytest runs the family's contract:

    from nvllm.testing import SchedulerSuite

    class TestMyPolicy(SchedulerSuite):
        name = "my_policy"
        configs = [{}, {"max_skips": 2}]  # Config fields; every test runs once per entry

The component is looked up by name after `load_plugins()`, so the suites also prove that the
package's entry point registers it. Needs pytest (nvllm's `dev` extra)."""
import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nvllm import registry
from nvllm.attention.base import AttentionMetadata
from nvllm.config import compose
from nvllm.sequence import Sequence, SequenceStatus
from nvllm.plugins import load_plugins
from nvllm.sampling_params import SamplingParams


class ComponentSuite:
    """What every component owes the framework: found by name, with a conforming Config."""

    family: str = ""
    # the registered component name under test
    name: str = ""
    # Config fields to run every test with, one run per dict
    configs: list[dict] = [{}]

    def pytest_generate_tests(self, metafunc):
        if "config_fields" in metafunc.fixturenames:
            metafunc.parametrize("config_fields", self.configs, ids=[_id(f) for f in self.configs])

    @property
    def component(self) -> type:
        load_plugins()
        return registry.get(self.family, self.name)

    @pytest.fixture
    def config(self, config_fields):
        return self.component.Config(**config_fields)

    def test_registered_under_its_name(self):
        assert self.name, f"set `name` on {type(self).__name__} to the {self.family} under test"
        assert self.component.name == self.name

    def test_config_convention(self, config_fields):
        config_cls = self.component.Config
        assert dataclasses.is_dataclass(config_cls), "Config must be a dataclass"
        missing = [f.name for f in dataclasses.fields(config_cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        assert not missing, f"Config fields need defaults (the CLI builds it from nothing): {missing}"
        assert config_cls().name == self.name, "Config's `name` field must default to the component name"
        composed = compose(**{self.family: {"name": self.name, **config_fields}})[self.family]
        assert registry.typed_config(self.family, composed) == config_cls(**config_fields)


# --- scheduler ------------------------------------------------------------------------------

EOS = 0


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
    """Driven through synthetic workloads: never more than max_num_seqs sequences or
    max_num_batched_tokens tokens in a step, never a request lost or finished twice, every
    scheduled sequence has cache blocks for what it computes, and every block is free at the end."""

    family = "scheduler"
    # the allocator the scheduler runs against
    kv_cache: str = "paged"

    def build(self, config, w: Workload):
        kv_config = registry.get("kv_cache", self.kv_cache).Config(block_size=w.block_size)
        kv = registry.build("kv_cache", kv_config, num_blocks=w.num_blocks, block_size=w.block_size)
        return registry.build("scheduler", config, kv_cache=kv, max_num_seqs=w.max_num_seqs,
                              max_num_batched_tokens=w.max_num_batched_tokens,
                              max_model_len=w.max_num_batched_tokens, eos_token_ids=frozenset({EOS}))

    @pytest.mark.parametrize("seed", [0, 1])
    @pytest.mark.parametrize("workload", WORKLOADS)
    def test_workload_runs_to_completion_within_limits(self, config, workload, seed):
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
            scheduled = sched.schedule()
            self.check_step(sched, w, scheduled, added, finished)
            tokens = [EOS if rng.random() < w.eos_chance else rng.randrange(1, 100) for _ in scheduled]
            for seq in sched.postprocess(scheduled, tokens):
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
                assert seq.finish_reason == "length"
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
    def check_step(sched, w: Workload, scheduled: list[Sequence], added, finished):
        assert scheduled, "the scheduler picked nothing while requests are pending"
        assert len(scheduled) <= w.max_num_seqs, f"{len(scheduled)} sequences > max_num_seqs={w.max_num_seqs}"
        assert len({s.seq_id for s in scheduled}) == len(scheduled), "a sequence scheduled twice in one step"
        num_tokens = sum(s.num_scheduled_tokens for s in scheduled)
        assert num_tokens <= w.max_num_batched_tokens, f"{num_tokens} tokens > max_num_batched_tokens"
        running = {id(s) for s in sched.running}
        live = [s for s in added if s.seq_id not in finished and s.block_table]
        for seq in scheduled:
            assert seq.status == SequenceStatus.RUNNING and id(seq) in running, "scheduled but not running"
            assert 1 <= seq.num_scheduled_tokens <= len(seq) - seq.num_computed_tokens, "bad num_scheduled_tokens"
            end = seq.num_computed_tokens + seq.num_scheduled_tokens
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


# --- KV cache allocator ---------------------------------------------------------------------


class KVCacheSuite(ComponentSuite):
    """Driven the way the scheduler drives it (admit, compute in chunks, append, finish, preempt):
    free blocks plus blocks held equal the cache, a sequence reads only K/V computed from its own
    tokens (so a prefix hit has identical tokens), no block is written while another sequence holds
    it, a hit never covers the whole sequence, and every block is free once all are released."""

    family = "kv_cache"
    # operations per random run
    num_ops: int = 300

    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("block_size, num_blocks", [(1, 16), (4, 6), (4, 24)])
    def test_random_operations_keep_the_contract(self, config, block_size, num_blocks, seed):
        config = dataclasses.replace(config, block_size=block_size)
        kv = registry.build("kv_cache", config, num_blocks=num_blocks, block_size=block_size)
        assert kv.num_free_blocks == num_blocks
        rng = random.Random(seed)
        self.live: list[Sequence] = []
        self.slots: dict[tuple[int, int], tuple[int, ...]] = {}  # (block, offset) -> tokens its K/V encodes
        waiting, history = [], []
        for _ in range(self.num_ops):
            op = rng.choices(["admit", "compute", "decode", "finish", "preempt"], [35, 30, 20, 8, 7])[0]
            if op == "admit":
                if waiting and rng.random() < 0.5:
                    seq = waiting.pop(rng.randrange(len(waiting)))
                else:
                    seq = Sequence(self._prompt(rng, history, block_size), SamplingParams(), block_size)
                    history.append(list(seq.token_ids))
                if kv.can_allocate(seq):
                    self.admit(kv, seq, block_size)
                else:
                    waiting.append(seq)
            elif op == "compute" and (todo := [s for s in self.live if s.num_computed_tokens < len(s)]):
                seq = rng.choice(todo)
                self.compute(kv, seq, rng.randint(seq.num_computed_tokens + 1, len(seq)), block_size)
            elif op == "decode" and (done := [s for s in self.live if s.num_computed_tokens == len(s) < 48]):
                seq = rng.choice(done)
                seq.append_token(rng.randrange(4))
                if kv.can_append(seq):
                    kv.may_append(seq)
                    assert len(seq.block_table) * block_size >= len(seq), "may_append left tokens without blocks"
                else:
                    self.release(kv, seq)
                    waiting.append(seq)
            elif op in ("finish", "preempt") and self.live:
                seq = rng.choice(self.live)
                self.release(kv, seq)
                if op == "preempt":
                    waiting.append(seq)
            self.check(kv, num_blocks, block_size)
        for seq in list(self.live):
            self.release(kv, seq)
        assert kv.num_free_blocks == num_blocks, "blocks leaked after every sequence was released"
        assert 0.0 <= kv.hit_rate <= 1.0

    @staticmethod
    def _prompt(rng, history, block_size) -> list[int]:
        # a 4-token alphabet and reused prefixes: many identical blocks, exact duplicates, prompts
        # that are exact multiples of the block size
        tail = [rng.randrange(4) for _ in range(rng.randrange(3 * block_size + 2))]
        if history and rng.random() < 0.6:
            base = rng.choice(history)
            tail = base[:rng.randint(0, len(base))] + tail
        return tail or [rng.randrange(4)]

    def admit(self, kv, seq: Sequence, block_size: int):
        kv.allocate(seq)
        self.live.append(seq)
        table = seq.block_table
        assert len(table) * block_size >= len(seq), "allocate left tokens without blocks"
        assert 0 <= seq.num_computed_tokens < len(seq), "a prefix hit covered the whole sequence"

    def compute(self, kv, seq: Sequence, upto: int, block_size: int):
        """The model writes K/V for positions [num_computed_tokens, upto), then postprocess reports it."""
        others = {b for s in self.live if s is not seq for b in s.block_table}
        for p in range(seq.num_computed_tokens, upto):
            block = seq.block_table[p // block_size]
            assert block not in others, f"writing block {block}, which another sequence holds"
            self.slots[block, p % block_size] = tuple(seq.token_ids[:p + 1])
        seq.num_computed_tokens = upto
        kv.on_computed(seq)

    def release(self, kv, seq: Sequence):
        kv.deallocate(seq)
        self.live.remove(seq)
        assert not seq.block_table and seq.num_computed_tokens == 0, "deallocate must reset the sequence"

    def check(self, kv, num_blocks: int, block_size: int):
        held = set()
        for seq in self.live:
            table = seq.block_table
            assert len(set(table)) == len(table), "a block twice in one block table"
            assert all(0 <= b < num_blocks for b in table), "block id out of range"
            held.update(table)
            for p in range(seq.num_computed_tokens):  # what attention will read as this sequence's past
                assert self.slots.get((table[p // block_size], p % block_size)) == tuple(seq.token_ids[:p + 1]), \
                    f"sequence {seq.seq_id} position {p} holds K/V of other tokens"
        assert len(held) + kv.num_free_blocks == num_blocks, "free blocks + held blocks != the cache"


# --- attention backend ----------------------------------------------------------------------

# (query_len, context_len) per sequence: context_len - query_len tokens are already in the cache
ATTENTION_CASES = {
    "prefill": [(1, 1), (7, 7), (33, 33)],
    "prefix-cached-prefill": [(5, 21), (16, 16), (3, 40), (1, 9)],
    "decode": [(1, 1), (1, 6), (1, 17), (1, 40)],
    "decode-beside-prefill": [(1, 30), (12, 12), (4, 19)],
}


class AttentionSuite(ComponentSuite):
    """Random paged inputs (shuffled block tables, garbage in unused slots, GQA): the output and the
    K/V written to the cache match the reference backend for prefill, prefix-cached prefill, decode
    and mixed batches, over two layers sharing one `prepare`."""

    family = "attention"
    # the backend whose output is taken as right
    reference: str = "sdpa"
    device: str = "cpu"
    dtypes: tuple = (torch.float32,)
    block_sizes: tuple = (4, 16)
    # (num_heads, num_kv_heads, head_dim)
    head_shapes: tuple = ((4, 2, 64), (2, 2, 32))
    # dtype -> (atol, rtol)
    tolerances = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}

    @pytest.mark.parametrize("case", ATTENTION_CASES)
    def test_matches_reference_on_paged_inputs(self, config, case):
        if self.device == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        device = torch.device(self.device)
        for dtype in self.dtypes:
            backend = registry.build("attention", config, device=device, dtype=dtype)
            reference = registry.build("attention", self.reference, device=device, dtype=dtype)
            for block_size in self.block_sizes:
                for shape in self.head_shapes:
                    self.compare(backend, reference, ATTENTION_CASES[case], block_size, shape, dtype, device)

    def compare(self, backend, reference, lens, block_size, shape, dtype, device):
        gen = torch.Generator().manual_seed(block_size * 1000 + sum(shape))
        num_heads, num_kv_heads, head_dim = shape
        tables, num_blocks = paged_block_tables(lens, block_size, gen)
        layers = []
        for _ in range(2):
            n = sum(q for q, _ in lens)
            cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
            layers.append([torch.randn(s, generator=gen).to(device, dtype) for s in (
                (n, num_heads, head_dim), (n, num_kv_heads, head_dim), (n, num_kv_heads, head_dim),
                cache_shape, cache_shape)])
        results = []
        for impl in (backend, reference):
            meta = attention_metadata(lens, tables, block_size, device)
            impl.prepare(meta, block_size)
            outs = []
            for q, k, v, k_cache, v_cache in layers:
                k_cache, v_cache = k_cache.clone(), v_cache.clone()
                outs.append((impl.forward(q, k, v, k_cache, v_cache, meta, head_dim ** -0.5), k_cache, v_cache))
            results.append(outs)
        atol, rtol = self.tolerances[dtype]
        where = f"lens={lens} block_size={block_size} heads={shape} {dtype}"
        for layer, ((out, kc, vc), (ref, ref_kc, ref_vc)) in enumerate(zip(*results)):
            assert out.shape == ref.shape, where
            torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol,
                                       msg=lambda m: f"{where} layer {layer}: {m}")
            assert torch.equal(kc, ref_kc) and torch.equal(vc, ref_vc), f"{where} layer {layer}: K/V written differently"


def paged_block_tables(lens, block_size: int, gen) -> tuple[list[list[int]], int]:
    """Each sequence gets distinct blocks drawn from a shuffled cache with a few spare blocks."""
    needed = [-(-ctx // block_size) for _, ctx in lens]
    num_blocks = sum(needed) + 3
    ids = torch.randperm(num_blocks, generator=gen).tolist()
    tables, start = [], 0
    for n in needed:
        tables.append(ids[start:start + n])
        start += n
    return tables, num_blocks


def attention_metadata(lens, tables, block_size: int, device) -> AttentionMetadata:
    """As the model runner builds it (nvllm/engine/model_runner.py)."""
    slots, cu = [], [0]
    for (q, ctx), table in zip(lens, tables):
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(ctx - q, ctx))
        cu.append(cu[-1] + q)
    width = max(len(t) for t in tables)
    padded = [t + [-1] * (width - len(t)) for t in tables]
    return AttentionMetadata(
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        context_lens=torch.tensor([ctx for _, ctx in lens], dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        query_lens=[q for q, _ in lens], context_lens_host=[ctx for _, ctx in lens],
        is_decode=max(q for q, _ in lens) == 1)


# --- sampler --------------------------------------------------------------------------------


class SamplerSuite(ComponentSuite):
    """Greedy (temperature 0) is deterministic, row-independent and keeps a clear winner; a seeded
    request's stream depends only on its seed, never on the batch or the global RNG; different
    seeds differ; temperature > 0 really samples; top_k is honoured. Sequences grow as in the
    engine, so samplers that read the token history are exercised."""

    family = "sampler"
    vocab: int = 256

    def make(self, config):
        return registry.build("sampler", config, device=torch.device("cpu"))

    def seq(self, rng: random.Random, **params) -> Sequence:
        return Sequence([rng.randrange(self.vocab) for _ in range(rng.randint(1, 12))], SamplingParams(**params), 16)

    def test_one_valid_token_per_row(self, config):
        rng = random.Random(0)
        seqs = [self.seq(rng, temperature=0), self.seq(rng, temperature=1.0), self.seq(rng, temperature=0.7, top_k=5),
                self.seq(rng, temperature=1.2, top_p=0.5), self.seq(rng, temperature=1.0, seed=3)]
        out = self.make(config)(torch.randn(len(seqs), self.vocab), seqs)
        assert isinstance(out, list) and len(out) == len(seqs)
        assert all(isinstance(t, int) and 0 <= t < self.vocab for t in out)

    def test_greedy_keeps_a_clear_winner(self, config):
        rng, sampler = random.Random(1), self.make(config)
        seqs = [self.seq(rng, temperature=0, **p) for p in ({}, {"top_k": 3}, {"top_p": 0.1}, {"seed": 5}, {})]
        winners = [rng.randrange(self.vocab) for _ in seqs]
        for _ in range(3):
            seqs[-1].append_token(winners[-1])  # even a token the request already repeats
        logits = torch.randn(len(seqs), self.vocab)
        logits[range(len(seqs)), winners] += 30
        assert sampler(logits, seqs) == winners

    def test_greedy_is_deterministic_and_row_independent(self, config):
        rng, sampler = random.Random(2), self.make(config)
        seqs = [self.seq(rng, temperature=0) for _ in range(6)]
        logits = torch.randn(6, self.vocab)
        torch.manual_seed(0)
        first = sampler(logits, seqs)
        torch.manual_seed(1)
        assert sampler(logits, seqs) == first
        assert [sampler(logits[b:b + 1], [s])[0] for b, s in enumerate(seqs)] == first

    def stream(self, sampler, seq: Sequence, steps: list[torch.Tensor], neighbours: bool, rng: random.Random):
        """Tokens sampled for `seq` over `steps`, appended to it as the engine does."""
        tokens = []
        for row in steps:
            others = [self.seq(rng, temperature=rng.choice([0, 0.8, 1.5]), seed=rng.choice([None, 9]))
                      for _ in range(rng.randrange(4) if neighbours else 0)]
            pos = rng.randrange(len(others) + 1)
            batch = others[:pos] + [seq] + others[pos:]
            logits = torch.randn(len(batch), self.vocab)
            logits[pos] = row
            token = sampler(logits, batch)[pos]
            seq.append_token(token)
            tokens.append(token)
        return tokens

    def test_seed_alone_decides_the_stream(self, config):
        steps = [torch.randn(self.vocab) * 0.5 for _ in range(12)]
        prompt = [7, 8, 9]
        torch.manual_seed(0)
        alone = self.stream(self.make(config), Sequence(prompt, SamplingParams(temperature=1.0, seed=42), 16),
                            steps, False, random.Random(0))
        torch.manual_seed(1)
        sampler = self.make(config)
        target = Sequence(prompt, SamplingParams(temperature=1.0, seed=42), 16)
        assert self.stream(sampler, target, steps, True, random.Random(1)) == alone, "batch or global RNG changed it"
        sampler.release(target)
        again = Sequence(prompt, SamplingParams(temperature=1.0, seed=42), 16)  # a new request, same seed
        assert self.stream(sampler, again, steps, True, random.Random(2)) == alone, "state leaked across requests"
        sampler.release(Sequence([1], SamplingParams(), 16))  # releasing an unknown request is harmless

    def test_different_seeds_differ_and_unseeded_samples(self, config):
        flat = [torch.zeros(self.vocab) for _ in range(10)]
        streams = {tuple(self.stream(self.make(config), Sequence([1], SamplingParams(temperature=1.0, seed=s), 16),
                                     flat, False, random.Random(0))) for s in range(4)}
        assert len(streams) == 4, "different seeds gave the same tokens"
        rng = random.Random(3)
        seqs = [self.seq(rng, temperature=1.0) for _ in range(64)]
        assert len(set(self.make(config)(torch.zeros(64, self.vocab), seqs))) > 16, "temperature 1 does not sample"

    def test_top_k_is_honoured(self, config):
        rng, sampler = random.Random(4), self.make(config)
        top = rng.sample(range(16, self.vocab), 3)  # history tokens stay below 16: penalties cannot reorder
        seqs = [Sequence([rng.randrange(16) for _ in range(5)], SamplingParams(temperature=2.0, top_k=3), 16)
                for _ in range(64)]
        logits = torch.randn(64, self.vocab) * 0.1
        logits[:, top] += 5
        assert set(sampler(logits, seqs)) <= set(top)


# --- model ----------------------------------------------------------------------------------


class ModelSuite(ComponentSuite):
    """On its own seeded random-weight checkpoint (its `random_presets[preset]`), the architecture's
    greedy tokens equal Hugging Face transformers' (float32, CPU), batched and with prefix-cache hits."""

    family = "model"
    preset: str = "tiny"
    # extra arguments for make_random_checkpoint (a transformers config class, config fields)
    checkpoint_overrides: dict = {}
    max_new_tokens: int = 12

    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory) -> str:
        from nvllm.tools.checkpoint import make_random_checkpoint

        load_plugins()
        arch = registry.get("model", cls.name)
        assert cls.preset in arch.random_presets, f"{cls.name} needs random_presets[{cls.preset!r}]"
        assert arch.hf_config_class and arch.hf_model_types, f"{cls.name} needs hf_config_class and hf_model_types"
        return make_random_checkpoint(cls.name, str(tmp_path_factory.mktemp(cls.name)), preset=cls.preset,
                                      seed=0, **cls.checkpoint_overrides)

    def test_matches_transformers_greedy(self, config_fields, checkpoint):
        from nvllm import LLM

        vocab = json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"]
        rng = random.Random(0)
        prompts = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 9, 40)]
        # after the first batch, the last prompt's first two 16-token blocks are in the prefix cache
        second = prompts[-1][:33] + [rng.randrange(vocab) for _ in range(5)]
        want = hf_greedy(checkpoint, prompts + [second], self.max_new_tokens)
        greedy = SamplingParams(temperature=0, max_tokens=self.max_new_tokens, ignore_eos=True)
        with LLM(model={"name": self.name, "path": checkpoint, **config_fields}, kv_cache={"block_size": 16},
                 max_model_len=256, max_num_batched_tokens=512) as llm:
            got = [o.token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
            got += [o.token_ids for o in llm.generate([second], greedy, use_tqdm=False)]
            assert llm.engine.kv_cache.num_hit_tokens > 0, "the second round found no prefix hit"
        assert got == want


def hf_greedy(path: str, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Reference tokens: transformers, float32 on CPU, greedy, one prompt at a time, past EOS."""
    import inspect

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    # transformers 5 renamed `past_key_values` to `cache`
    cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model(torch.tensor([prompt]), use_cache=True)
            generated = []
            for _ in range(max_new_tokens):
                generated.append(int(out.logits[0, -1].argmax()))
                out = model(torch.tensor([[generated[-1]]]), use_cache=True, **{cache_key: getattr(out, cache_key)})
            outputs.append(generated)
    return outputs


def _id(fields: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in fields.items()) or "defaults"
