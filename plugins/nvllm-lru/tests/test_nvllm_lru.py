"""nvllm-lru: nvllm's allocator contract, then which blocks it keeps compared with `paged`."""
import pytest

from nvllm import LLM, SamplingParams, registry
from nvllm.sequence import Sequence
from nvllm.plugins import load_plugins
from nvllm.testing import KVCacheSuite


class TestLRUConformance(KVCacheSuite):
    name = "lru"
    configs = [{}, {"protect_after_hits": 0}, {"prefix_caching": False}]


def make(name, num_blocks, block_size=4, **fields):
    load_plugins()
    cls = registry.get("kv_cache", name)
    return cls(cls.Config(block_size=block_size, **fields), num_blocks=num_blocks, block_size=block_size)


def run(kv, prompt) -> Sequence:
    """Admit `prompt`, compute it, release it, as a one-token request would."""
    seq = Sequence(prompt, SamplingParams(), kv.block_size)
    kv.allocate(seq)
    seq.num_computed_tokens = len(seq)
    kv.on_computed(seq)
    return seq


def hit_tokens(kv, prompt) -> int:
    seq = Sequence(prompt, SamplingParams(), kv.block_size)
    kv.allocate(seq)
    hits = seq.num_computed_tokens
    kv.deallocate(seq)
    return hits


def test_empty_blocks_are_overwritten_before_cached_ones():
    x, y, z = list(range(100, 110)), list(range(200, 205)), list(range(300, 312))
    hits = {}
    for name in ("paged", "lru"):
        kv = make(name, num_blocks=6)
        seq_y, seq_x = run(kv, y), run(kv, x)  # y: a cached block + a partial one; x: two cached + a partial
        kv.deallocate(seq_x)
        kv.deallocate(seq_y)
        kv.deallocate(run(kv, z))  # needs 3 of the 6 blocks: paged takes x's cached second block
        hits[name] = hit_tokens(kv, x[:8] + [1, 2])
    assert hits == {"paged": 4, "lru": 8}


def test_a_prefix_hit_often_survives_a_burst_of_one_off_prompts():
    system = list(range(100, 108))  # two blocks shared by every chat request
    hits = {}
    for name, fields in (("paged", {}), ("lru", {"protect_after_hits": 0}), ("lru", {"protect_after_hits": 2})):
        kv = make(name, num_blocks=8, **fields)
        for question in range(3):
            kv.deallocate(run(kv, system + [question, 50, 51]))
        for burst in range(4):  # 12 blocks of unrelated prompts through an 8-block cache
            kv.deallocate(run(kv, list(range(1000 * (burst + 1), 1000 * (burst + 1) + 12))))
        hits[name, fields.get("protect_after_hits")] = hit_tokens(kv, system + [9, 9, 9])
    assert hits == {("paged", None): 0, ("lru", 0): 0, ("lru", 2): 8}


def test_a_hit_revives_a_block_and_makes_it_recent():
    kv = make("lru", num_blocks=4, protect_after_hits=0)
    a, b = list(range(10, 15)), list(range(20, 25))  # a cached block + a partial one each
    kv.deallocate(run(kv, a))
    kv.deallocate(run(kv, b))
    kv.deallocate(run(kv, a[:4] + [7]))  # a hit on a's block: now the most recently used
    # three blocks: the two empty ones, then the least recently used cached one: b's, not a's
    kv.deallocate(run(kv, list(range(30, 42))))
    assert hit_tokens(kv, a[:4] + [8]) == 4 and hit_tokens(kv, b[:4] + [8]) == 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from nvllm.tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint("qwen3", str(tmp_path_factory.mktemp("tiny-qwen3")), preset="tiny", seed=0)


def test_engine_tokens_are_the_same_as_with_paged(tiny_model):
    """Eviction decides what is recomputed, never what is generated."""
    system = [(3 * j) % 500 for j in range(40)]
    prompts = [system + [i, i + 1, i + 2] for i in range(4)]
    prompts += [[(11 * j + i) % 500 for j in range(50)] for i in range(3)]
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    runs = {}
    for name in ("paged", "lru"):
        with LLM(tiny_model, kv_cache={"name": name, "block_size": 16, "num_blocks": 10}, max_num_seqs=2,
                 max_model_len=128, max_num_batched_tokens=128) as llm:
            tokens = [o.outputs[0].token_ids for p in prompts for o in llm.generate([p], greedy, use_tqdm=False)]
            runs[name] = tokens, llm.engine.kv_cache.hit_rate
    assert runs["lru"][0] == runs["paged"][0]
    assert runs["lru"][1] >= runs["paged"][1] > 0
