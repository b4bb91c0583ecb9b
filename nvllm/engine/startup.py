"""The one line the engine logs once it has started: what really runs, and how long loading took."""
from nvllm.kernels import threads


def startup_line(engine) -> str:
    """One line on what really runs: model, device, dtype, forward strategy, attention backend, KV cache."""
    c, runner, kv = engine.config, engine.model_runner, engine.kv_cache
    gib = kv.num_blocks * runner._block_bytes() / 2**30
    auto = lambda choice: " (auto)" if choice else ""  # noqa: E731
    return (f"nvllm: model={c.model.name} ({engine.model_path}{', RANDOM WEIGHTS' if engine.random_weights else ''}) "
            f"on {c.device}, {c.dtype}, tp={c.tp}; forward={c.forward.name}{auto(c.forward_choice)}, "
            f"attention={c.attention.name}{auto(c.attention_choice)}{', compile' if c.compile else ''}; "
            f"KV cache {kv.num_blocks} blocks x {kv.block_size} tokens = {gib:.2f} GiB; max_model_len={c.max_model_len}; "
            f"{threads.startup_clause(c.device)}"
            f"loaded in {engine.startup_s['load']:.1f} s, warmed up in {engine.startup_s['warmup']:.1f} s")
