"""`python -m nvllm.serve`: an OpenAI-compatible HTTP server over one engine, composed by the
same Hydra config as `nvllm.run` (every group and switch) plus `serve.host` and `serve.port`:

    python -m nvllm.serve scheduler=chunked serve.port=8000

It prints the address once it is ready; Ctrl-C stops it cleanly (tensor-parallel ranks too).
Needs the `serve` extra: pip install 'nvllm[serve]'."""
import logging

import hydra
from omegaconf import DictConfig

from nvllm.config import ServeConfig, setup
from nvllm.errors import ConfigError

setup()  # the plugins, and every component's config in Hydra's ConfigStore, before Hydra composes
logger = logging.getLogger("nvllm.serve")


@hydra.main(config_path="pkg://nvllm.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError("python -m nvllm.serve runs one server: drop -m/--multirun")
    serve(cfg, ServeConfig(**cfg.serve), HydraConfig.get().runtime.choices["model"])


def serve(cfg: DictConfig, serve_config: ServeConfig, model_name: str) -> None:
    """Serve the engine `cfg` composes, under `model_name` (what clients send as `model`)."""
    try:
        from nvllm.server.app import build_app, run_server
    except ImportError as e:
        raise SystemExit(f"nvllm.serve needs the serve extra ({e}): pip install 'nvllm[serve]'") from None
    from nvllm.config import Config
    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.server.engine_loop import EngineLoop

    config = Config.from_cfg(cfg)  # a bad component config is refused here, before the model loads
    engine_loop = EngineLoop(lambda: LLMEngine(config))
    engine_loop.start()
    try:
        if engine_loop.engine.random_weights:
            logger.warning("nvllm: RANDOM WEIGHTS — this checkpoint was generated for testing; its text means nothing")
        app = build_app(engine_loop, model_name)
        run_server(app, serve_config.host, serve_config.port, f"nvllm.serve: {model_name} ready on")
    finally:
        engine_loop.stop()
    logger.info("nvllm.serve: stopped")


if __name__ == "__main__":
    main()
