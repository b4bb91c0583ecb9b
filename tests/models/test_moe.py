"""Mixtures of experts: the MoE layer against transformers' own blocks, model=qwen3_moe's greedy
tokens against transformers' through the engine's paths (prefix caching, chunked prefill,
preemption, speculative decoding, each through forward=eager and forward=fused_cpu's C step; tp=2
and expert parallelism), the C step reading each chosen expert once a step, its weights loaded by
expert index from sharded checkpoints, and bad checkpoints and switches refused before loading."""
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from nvllm import LLM, SamplingParams
from nvllm.engine.model_runner import step_inputs
from nvllm.errors import ConfigError
from nvllm.forward import fused_cpu
from nvllm.forward.eager import EagerForward
from nvllm.kernels import OLDER_CPUS
from nvllm.models.layers import moe
from nvllm.models.weights import WeightsError
from nvllm.tools.checkpoint import make_random_checkpoint
from tests.conftest import hf_greedy

MAX_NEW = 16
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
# the torch modules, and the C step (moe_step.h); a parity test runs under each
FORWARDS = ["eager", "fused_cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """Tiny Qwen3-MoE: a dense layer, then two layers of 8 experts with 2 chosen per token, in
    safetensors shards that split the experts of one layer across files."""
    return make_random_checkpoint("qwen3_moe", str(tmp_path_factory.mktemp("qwen3-moe")), preset="tiny", seed=0,
                                  max_shard_size="100KB")


def prompts() -> list[list[int]]:
    rng = random.Random(1)
    pattern = [rng.randrange(512) for _ in range(5)]
    out = [[rng.randrange(512) for _ in range(n)] for n in (1, 7, 30, 90)] + [pattern * 5]
    return out + [out[3][:40] + [3, 1, 4]]  # prefix-cache hits on the fourth prompt's blocks


@pytest.fixture(scope="module")
def reference(checkpoint):
    return hf_greedy(checkpoint, prompts(), MAX_NEW)


def generate(path, forward, inspect=lambda engine: None, **overrides) -> tuple[list[list[int]], object]:
    """The prompts' greedy tokens under forward=`forward` (the last one in a second round, after the
    others' blocks are cached) and the engine; `inspect(engine)` is called while it is open."""
    settings = {"kv_cache": {"block_size": 8}, "max_model_len": 256, "max_num_batched_tokens": 512, **overrides}
    with LLM(path, forward=forward, **settings) as llm:
        assert llm.engine.config.forward.name == forward
        inspect(llm.engine)
        first = prompts()[:-1]
        tokens = [o.outputs[0].token_ids for o in llm.generate(first, GREEDY, use_tqdm=False)]
        tokens += [o.outputs[0].token_ids for o in llm.generate(prompts()[-1:], GREEDY, use_tqdm=False)]
        return tokens, llm.engine


def test_the_checkpoint_has_experts_across_shards_and_a_dense_layer(checkpoint):
    index = json.loads((Path(checkpoint) / "model.safetensors.index.json").read_text())["weight_map"]
    files = {index[f"model.layers.1.mlp.experts.{e}.{w}.weight"] for e in range(8) for w in ("gate_proj", "up_proj")}
    assert len(files) > 1, "one layer's experts should span several safetensors files"
    assert "model.layers.0.mlp.gate_proj.weight" in index and "model.layers.0.mlp.gate.weight" not in index


@pytest.mark.parametrize("forward", FORWARDS)
def test_greedy_tokens_match_transformers_with_prefix_caching(checkpoint, reference, forward):
    tokens, engine = generate(checkpoint, forward)
    assert engine.kv_cache.num_hit_tokens > 0, "the last prompt found no prefix-cache hit"
    assert tokens == reference


@pytest.mark.parametrize("forward", FORWARDS)
def test_greedy_tokens_match_transformers_under_chunked_prefill_and_preemption(checkpoint, reference, forward):
    tokens, engine = generate(checkpoint, forward, scheduler="chunked", max_num_batched_tokens=24,
                              kv_cache={"block_size": 8, "num_blocks": 20})
    assert engine.scheduler.num_preemptions > 0, "the small cache preempted nothing"
    assert tokens == reference


@pytest.mark.parametrize("drafter", [{"name": "ngram", "max_num_draft_tokens": 64},
                                     {"name": "draft", "num_layers": 1, "max_num_draft_tokens": 64}],
                         ids=["ngram", "draft"])
@pytest.mark.parametrize("forward", FORWARDS)
def test_greedy_tokens_match_transformers_with_speculative_decoding(checkpoint, reference, forward, drafter):
    tokens, engine = generate(checkpoint, forward, speculative=drafter)
    stats = engine.stats.spec_decode
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens, "drafts were not both accepted and rejected"
    assert tokens == reference


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
@pytest.mark.parametrize("expert_parallel", [False, True], ids=["tp-sharded-experts", "expert-parallel"])
def test_tp2_greedy_tokens_match_transformers(checkpoint, reference, expert_parallel):
    shapes = []

    def rank0_experts(engine):
        layer = engine.executor.model.model.layers[1].mlp
        shapes.append((layer.w13.shape[0], layer.w2.shape[2]))

    tokens, engine = generate(checkpoint, "eager", rank0_experts, tp=2, moe={"expert_parallel": expert_parallel},
                              kv_cache={"block_size": 8, "num_blocks": 24})
    # expert-parallel: experts 0-3 whole on rank 0; else all 8, each with half its intermediate dimension
    assert shapes == [(4, 32) if expert_parallel else (8, 16)]
    assert engine.scheduler.num_preemptions > 0, "the small cache preempted nothing"
    assert tokens == reference


def test_forward_auto_runs_the_fused_step_on_a_cpu(checkpoint):
    with LLM(checkpoint, max_model_len=64) as llm:
        assert llm.engine.config.forward.name == "fused_cpu"
        assert llm.engine.config.forward_choice.startswith("forward=auto chose fused_cpu")


def test_the_avx2_build_of_the_fused_step_matches_transformers(checkpoint, reference, monkeypatch):
    """The C step built without AVX-512 (as on an AVX2-only CPU: 6-row tiles, two 8-float vectors a
    panel), with chunked prefill and preemption."""
    monkeypatch.setenv("NVLLM_KERNEL_FLAGS", OLDER_CPUS["avx2"])
    fused_cpu.kernel.cache_clear()
    try:
        assert fused_cpu.isa() == "avx2"
        tokens, engine = generate(checkpoint, "fused_cpu", scheduler="chunked", max_num_batched_tokens=24,
                                  kv_cache={"block_size": 8, "num_blocks": 20})
    finally:
        fused_cpu.kernel.cache_clear()
    assert engine.scheduler.num_preemptions > 0, "the small cache preempted nothing"
    assert tokens == reference


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_the_fused_step_with_16_bit_weights_matches_transformers_on_the_rounded_weights(checkpoint, dtype):
    """Router and experts packed in 16 bits and widened in registers: the float32 arithmetic on the
    rounded weights."""
    def resident(engine):
        # (the router and the dense layers' panels in 12 bits where the step reads them: bytes; the experts' in dtype)
        twelve = {torch.uint8, torch.int32} if dtype == torch.bfloat16 and fused_cpu.codes_bf16() else set()
        step = engine.executor.forward_strategy
        assert {t.dtype for panels in step.held for t in panels.tensors} == {dtype} | twelve
        assert {t.dtype for t in step.packed.values()} == {torch.float32}

    tokens, _ = generate(checkpoint, "fused_cpu", resident, dtype=str(dtype).removeprefix("torch."))
    assert tokens == hf_greedy(checkpoint, prompts(), MAX_NEW, round_to=dtype)


@pytest.mark.parametrize("fields, layers", [
    ({"norm_topk_prob": False}, [None, False, False]),
    ({"mlp_only_layers": [], "decoder_sparse_step": 2}, [None, True, None]),
    ({"moe_intermediate_size": 24, "num_experts_per_tok": 3}, [None, True, True])],
    ids=["scores-not-renormalised", "dense-layers-by-stride", "experts-off-the-panel-width"])
def test_the_fused_step_follows_the_checkpoints_routing_and_dense_layers(fields, layers, tmp_path):
    """The other order of operations (Qwen3-MoE's top-k scores as the softmax left them), dense
    layers chosen by decoder_sparse_step rather than listed (layers 0 and 2 dense, 1 sparse), and
    experts 24 wide (their gate and up halves each padded to the C step's 16-row panels), top 3.
    `layers`: each layer's renormalize, None where it is dense."""
    path = make_random_checkpoint("qwen3_moe", str(tmp_path), preset="tiny", seed=1, **fields)
    sparse = []

    def inspect(engine):  # which layers have experts, and whether they renormalise
        sparse.extend(layer.mlp.renormalize if isinstance(layer.mlp, moe.FusedMoE) else None
                      for layer in engine.executor.model.model.layers)

    tokens, _ = generate(path, "fused_cpu", inspect)
    assert sparse == layers
    assert tokens == hf_greedy(path, prompts(), MAX_NEW)


def test_the_fused_step_routes_as_the_layer_and_reads_each_chosen_expert_once(checkpoint):
    """A decode step of many sequences through the C step with its expert counters on: the rows it
    routed to each expert are what the torch layer's `route` chooses on the same step, and the
    expert weights its matmuls read are each chosen expert's once (gate|up and down), no other's."""
    rng = random.Random(5)
    num_seqs = 3  # few enough that some experts go unchosen
    with LLM(checkpoint, forward="fused_cpu", kv_cache={"block_size": 8}, max_model_len=64) as llm:
        engine, runner = llm.engine, llm.engine.executor
        step = runner.forward_strategy
        for i in range(num_seqs):
            engine.add_request(str(i), [rng.randrange(512) for _ in range(rng.randint(1, 20))],
                               SamplingParams(temperature=0, max_tokens=4))
        engine.step()  # the prefills
        plan = engine.scheduler.schedule()
        assert plan.is_decode and len(plan.seqs) == num_seqs
        inputs = runner.prepare(*step_inputs(plan))
        counters = step.count_experts()
        runner.forward(*inputs)
        layers = [layer.mlp for layer in runner.model.model.layers if isinstance(layer.mlp, moe.FusedMoE)]
        routed = []
        hooks = [layer.gate.register_forward_hook(  # each layer's choice of experts, from its router's logits
            lambda _, args, logits, layer=layer: routed.append(moe.route(logits, layer.top_k, layer.renormalize)[1]))
            for layer in layers]
        with torch.inference_mode():
            EagerForward.__call__(step, *inputs)  # the same step through the torch modules
        for hook in hooks:
            hook.remove()
    assert len(routed) == len(counters) == 2
    for layer, counts, chosen, moe_layer in zip(layers, counters, routed, step.moe_layers):
        assert counts[:-1].tolist() == torch.bincount(chosen.flatten(), minlength=layer.num_experts).tolist()
        used = len(chosen.unique())
        assert 1 < used < layer.num_experts
        assert counts[-1] == used * (moe_layer.w13_stride + moe_layer.w2_stride)


def hf_block(arch: str, **fields):
    """transformers' own sparse MoE block, random, float32, with its config."""
    import transformers

    if arch == "qwen3_moe":
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock as Block
        config = transformers.Qwen3MoeConfig(hidden_size=32, moe_intermediate_size=16, num_experts=6,
                                             num_experts_per_tok=3, **fields)
    else:
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as Block
        config = transformers.MixtralConfig(hidden_size=32, intermediate_size=16, num_local_experts=6,
                                            num_experts_per_tok=2, **fields)
    torch.manual_seed(0)
    block = Block(config).eval()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0, 0.3)
    return block, config


@pytest.mark.parametrize("arch, fields", [("qwen3_moe", {"norm_topk_prob": True}),
                                          ("qwen3_moe", {"norm_topk_prob": False}), ("mixtral", {})])
def test_the_layer_computes_what_transformers_block_does(arch, fields):
    block, config = hf_block(arch, **fields)
    renormalize = config.norm_topk_prob if arch == "qwen3_moe" else True
    layer = moe.FusedMoE(config.num_experts if arch == "qwen3_moe" else config.num_local_experts,
                         config.num_experts_per_tok, config.hidden_size, block.experts.down_proj.shape[-1],
                         renormalize=renormalize, scores_in_float32=arch == "mixtral")
    with torch.no_grad():
        layer.gate.weight.copy_(block.gate.weight)
        layer.w13.copy_(block.experts.gate_up_proj)  # transformers stacks them the same way
        layer.w2.copy_(block.experts.down_proj)
        x = torch.randn(37, config.hidden_size, generator=torch.Generator().manual_seed(1))
        want = block(x[None])[0]
        assert torch.allclose(layer(x), want, atol=1e-5, rtol=1e-5)
        layer.renormalize = not renormalize  # the same layer with the other order of operations differs
        assert not torch.allclose(layer(x), want, atol=1e-3)


def test_each_chosen_expert_runs_once_on_its_group_of_tokens(monkeypatch):
    layer = moe.FusedMoE(8, 2, 16, 8, renormalize=True)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, 0.5)
    x = torch.randn(64, 16)
    calls = []

    def linear(inp, weight, bias=None):
        calls.append(weight.data_ptr())
        return F.linear(inp, weight, bias)

    monkeypatch.setattr(moe, "F", SimpleNamespace(linear=linear, silu=F.silu, softmax=F.softmax))
    with torch.no_grad():
        _, experts = moe.route(layer.gate(x), 2, True)
        layer(x)
    chosen = sorted(set(experts.flatten().tolist()))
    assert calls == [p for e in chosen for p in (layer.w13[e].data_ptr(), layer.w2[e].data_ptr())]


def test_a_checkpoint_missing_an_expert_is_refused_naming_it(tmp_path):
    path = make_random_checkpoint("qwen3_moe", str(tmp_path), preset="tiny", seed=0, max_shard_size="100KB")
    index_file = Path(path) / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    # rewrite the shard that holds one expert's up_proj without it
    from safetensors.torch import load_file, save_file

    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    shard = Path(path) / index["weight_map"][name]
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=rf"the checkpoint has no weight '{name}', and config.json's "
                                           rf"num_experts=8 says"):
        LLM(path, max_model_len=64)


def test_more_experts_per_token_than_experts_is_refused(tmp_path):
    path = make_random_checkpoint("qwen3_moe", str(tmp_path), preset="tiny", seed=0)
    config_file = Path(path) / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "num_experts_per_tok": 9}))
    with pytest.raises(ConfigError, match=r"config.json has num_experts_per_tok=9 and num_experts=8"):
        LLM(path, max_model_len=64)


def test_expert_parallel_where_it_cannot_take_effect_is_refused(checkpoint, tiny_qwen3_path, tmp_path):
    with pytest.raises(ConfigError, match=r"moe.expert_parallel=true .* and this run has tp=1"):
        LLM(checkpoint, moe={"expert_parallel": True})
    with pytest.raises(ConfigError, match=r"model=qwen3 has no experts; drop moe.expert_parallel"):
        LLM(tiny_qwen3_path, tp=2, moe={"expert_parallel": True})
    six = make_random_checkpoint("qwen3_moe", str(tmp_path), preset="tiny", num_experts=6, num_key_value_heads=4)
    with pytest.raises(ConfigError, match=r"tp=4 does not divide this model's num_experts=6 with "
                                          r"moe.expert_parallel=true .*\(tp in \[1, 2\] works\); or set "
                                          r"moe.expert_parallel=false"):
        LLM(six, tp=4, moe={"expert_parallel": True})


def test_cuda_graphs_capture_a_mixture_of_experts_only_through_triton(monkeypatch):
    """The layer's Triton kernels are what a CUDA graph captures (its torch code reads each expert's
    group size on the host): forward=auto takes cudagraph on CUDA where Triton compiles, else eager,
    and forward=cudagraph is refused naming why (checked without a GPU)."""
    import sys

    from nvllm import registry
    from nvllm.auto import AUTO
    from nvllm.config import Config
    from nvllm.forward.base import ForwardTarget
    from nvllm.plugins import load_plugins

    load_plugins()
    target = ForwardTarget(torch.device("cuda"), torch.bfloat16, 1, registry.get("model", "qwen3_moe"), "triton", False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as on a machine with a GPU
    forward, choice = Config(forward=AUTO)._forward(target)
    assert forward.name == "cudagraph", choice
    for env, modules, why in [({"TRITON_INTERPRET": "1"}, {}, "TRITON_INTERPRET=1 is set"),
                              ({}, {"triton": None}, "the `triton` package is not installed")]:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            for key, value in modules.items():
                m.setitem(sys.modules, key, value)
            forward, choice = Config(forward=AUTO)._forward(target)
            assert forward.name == "eager"
            assert "passed over cudagraph: model=qwen3_moe is a mixture of experts" in choice
            with pytest.raises(ConfigError, match=rf"forward=cudagraph cannot run here: model=qwen3_moe is a mixture "
                                                  rf"of experts, whose layer a CUDA graph captures only as its Triton "
                                                  rf"kernels, and {why}.*; fix that, or use cudagraph=false"):
                Config(forward="cudagraph")._forward(target)


def test_an_expert_of_the_wrong_shape_is_refused_naming_it(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_random_checkpoint("qwen3_moe", str(tmp_path), preset="tiny", seed=0)
    name = "model.layers.1.mlp.experts.2.down_proj.weight"
    tensors = load_file(Path(path) / "model.safetensors")
    tensors[name] = tensors[name][:, :16].contiguous()
    save_file(tensors, Path(path) / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=rf"weight '{name}': it has shape \(64, 16\), and this model's experts "
                                           rf"need \(64, 32\)"):
        LLM(path, max_model_len=64)


def test_an_expert_past_the_experts_config_json_has_is_refused(tmp_path):
    path = make_random_checkpoint("qwen3_moe", str(tmp_path), preset="tiny", seed=0)
    config_file = Path(path) / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "num_local_experts": 7}))  # the checkpoint holds 8
    with pytest.raises(WeightsError, match=r"weight 'model.layers.1.mlp.experts.7.down_proj.weight': expert 7 is out "
                                           r"of range: this layer has num_experts=7"):
        LLM(path, max_model_len=64)


def routed_tokens(batch: list[list[int]]) -> int:
    """Tokens the model computes for `batch` without cache hits: each prompt, then every output
    token but the last (nothing computes after it)."""
    return sum(len(p) + MAX_NEW - 1 for p in batch)


@pytest.mark.parametrize("forward", ["eager", "fused_cpu"])
def test_tokens_per_expert_are_counted_for_metrics_json_and_prometheus(checkpoint, forward):
    """Each sparse layer counts top_k = 2 routings per computed token (warm-up excluded), through the
    torch modules and through the C step (which routes in C, and counts there); the counts are
    metrics.json's `expert_load` and /metrics' nvllm:moe_expert_tokens_total, which are read at scrape
    time; moe.expert_load=false counts nothing, and says so with null rather than zeros."""
    from prometheus_client.parser import text_string_to_metric_families

    from nvllm.metrics import collect
    from nvllm.server.prometheus import PrometheusMetrics

    batch = prompts()[:-1]
    settings = {"kv_cache": {"block_size": 8, "prefix_caching": False}, "max_model_len": 256}
    with LLM(checkpoint, forward=forward, **settings) as llm:
        prometheus = PrometheusMetrics("tiny-moe")
        assert "moe_expert_tokens" not in prometheus.render().decode()  # no step yet: nothing to read
        outputs = llm.generate(batch, GREEDY, use_tqdm=False)
        prometheus.on_step(llm.engine, [], {})
        load = llm.engine.executor.expert_load()
        metrics = collect(llm.engine, outputs, 1.0, {})
        text = prometheus.render().decode()
        stats = llm.engine.stats
    assert routed_tokens(batch) == stats.prefill_tokens + stats.decode_tokens
    assert set(load) == {1, 2}  # layer 0 is dense (mlp_only_layers)
    for counts in load.values():
        assert len(counts) == 8 and sum(counts) == 2 * routed_tokens(batch)
        assert sum(c > 0 for c in counts) > 1
    assert metrics["expert_load"]["tokens_per_expert"] == {"1": load[1], "2": load[2]}
    assert metrics["expert_load"]["max_over_mean"]["1"] == max(load[1]) * 8 / sum(load[1])
    samples = {(s.labels["layer"], s.labels["expert"]): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "nvllm:moe_expert_tokens_total"}
    assert samples == {(str(layer), str(e)): n for layer, counts in load.items() for e, n in enumerate(counts)}
    if forward == "eager":
        return
    with LLM(checkpoint, forward="eager", **settings) as llm:  # the same routings through the torch modules
        llm.generate(batch, GREEDY, use_tqdm=False)
        assert llm.engine.executor.expert_load() == load
    for strategy in ("eager", "fused_cpu"):
        with LLM(checkpoint, forward=strategy, moe={"expert_load": False}, **settings) as llm:
            outputs = llm.generate(batch[:1], GREEDY, use_tqdm=False)
            assert llm.engine.executor.expert_load() is None
            assert collect(llm.engine, outputs, 1.0, {})["expert_load"] is None


@pytest.mark.slow  # tp=2 worker processes, each loading torch and a model
def test_rank_0_counts_every_experts_tokens_under_expert_parallelism(checkpoint):
    """Rank 0 holds experts 0-3 only, and its replicated router routes every token over all 8: its
    counts are the whole layer's."""
    batch = prompts()[:3]
    with LLM(checkpoint, tp=2, forward="eager", moe={"expert_parallel": True}, max_model_len=256,
             kv_cache={"block_size": 8, "prefix_caching": False}) as llm:
        llm.generate(batch, GREEDY, use_tqdm=False)
        load = llm.engine.executor.expert_load()
        assert llm.engine.executor.model.model.layers[1].mlp.num_local_experts == 4
    assert all(len(c) == 8 and sum(c) == 2 * routed_tokens(batch) and sum(c[4:]) > 0 for c in load.values())


@pytest.mark.slow  # a run and a server, each a process loading torch
def test_the_counts_reach_metrics_json_and_the_servers_metrics(checkpoint, tmp_path):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_run import nvllm_run
    from tests.test_serve import Server

    _, metrics = nvllm_run("model=qwen3_moe", f"model.path={checkpoint}", "forward=eager", "workload=random_tiny",
                           "workload.num_seqs=3",
                           "workload.input_len=[8,8]", "workload.output_len=[4,4]", "workload.max_token_id=500",
                           "kv_cache.prefix_caching=false", "max_model_len=64", cwd=tmp_path)
    load = metrics["expert_load"]["tokens_per_expert"]
    assert set(load) == {"1", "2"} and all(len(c) == 8 and sum(c) == 2 * 3 * (8 + 3) for c in load.values())
    server = Server(tmp_path, "model=qwen3_moe", f"model.path={checkpoint}", "forward=eager", "max_model_len=64")
    try:
        answer = httpx.post(f"{server.url}/v1/completions", timeout=60,
                            json={"prompt": [1, 2, 3, 4, 5], "max_tokens": 4, "ignore_eos": True})
        assert answer.status_code == 200, answer.text
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    per_layer = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "nvllm:moe_expert_tokens_total":
                per_layer[s.labels["layer"]] = per_layer.get(s.labels["layer"], 0) + s.value
    assert per_layer == {"1": 2 * (5 + 3), "2": 2 * (5 + 3)}
