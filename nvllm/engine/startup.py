"""The one line the engine logs once it has started: what really runs, and how long loading took."""
from nvllm.kernels import threads
from nvllm.metrics import simulation_source


def startup_line(engine) -> str:
    """One line on what really runs: model, device, dtype, forward strategy, attention backend, KV
    cache; for a simulated run, what it simulates instead (this machine runs no forward pass)."""
    c, executor, kv = engine.config, engine.executor, engine.kv_cache
    gib = kv.num_blocks * executor.block_bytes() / 2**30
    auto = lambda choice: " (auto)" if choice else ""  # noqa: E731
    cache = f"KV cache {kv.num_blocks} blocks x {kv.block_size} tokens = {gib:.2f} GiB; max_model_len={c.max_model_len}; "
    loaded = f"loaded in {engine.startup_s['load']:.1f} s, warmed up in {engine.startup_s['warmup']:.1f} s"
    if engine.clock.simulated:
        return f"nvllm: {_simulated(c, executor)}; {cache}{loaded}"
    return (f"nvllm: model={c.model.name} ({engine.model_path}{', RANDOM WEIGHTS' if engine.random_weights else ''}) "
            f"on {c.device}, {c.dtype}, tp={c.tp}; forward={c.forward.name}{auto(c.forward_choice)}, "
            f"attention={c.attention.name}{auto(c.attention_choice)}{', compile' if c.compile else ''}; "
            f"{cache}{_weights(c, executor)}{threads.startup_clause(c.device)}{loaded}")


def _weights(c, executor) -> str:
    """The weights' resident bytes, and in what format the model holds them (a packed format: the linear
    layers, the embedding and the LM head; gguf keeps a file's F16 or F32 embedding in dtype)."""
    quantization = c.quantization.name if c.quantization else "none"
    return (f"weights {executor.weight_bytes() / 2**20:.1f} MiB (quantization={quantization}"
            f"{'' if quantization == 'none' else f', linear layers and embedding packed, norms {c.dtype}'}); ")


def _simulated(c, simulator) -> str:
    """The simulated device, dtype and model shape, and what times the steps. The engine's own
    device, dtype and attention backend are left out: nothing runs on them."""
    sim = simulator.describe()
    d = simulator.dims
    experts = (f", {d.experts} experts ({d.experts_per_tok} a token), {d.active_params / 1e9:.3g}B active"
               f"{', expert-parallel' if sim.get('expert_parallel') else ''}") if d.experts else ""
    shape = (f"{d.layers} layers, hidden {d.hidden}, {d.heads} heads ({d.kv_heads} KV), "
             f"{d.params / 1e9:.3g}B parameters{experts}")
    timed = "" if sim["strategy_simulated"] == "roofline" else f", steps of forward={sim['strategy_simulated']}"
    return (f"SIMULATED{'' if sim.get('calibrated') else ', UNCALIBRATED'} ({simulation_source(sim)}{timed}): "
            f"model={c.model.name} ({f'shape {c.model.shape}: ' if c.model.shape else ''}{shape}) on "
            f"{sim['hardware']}, {sim['dtype']}, tp={sim['tp']}; no forward pass runs, each step advances a "
            f"virtual clock by the cost model's time")
