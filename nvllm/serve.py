"""`python -m nvllm.serve`: an OpenAI-compatible HTTP server over one engine, composed by the
same Hydra config as `nvllm.run` (every group and switch) plus `serve.host` and `serve.port`:

    python -m nvllm.serve scheduler=chunked serve.port=8000

It prints the address once it is ready; Ctrl-C stops it cleanly (tensor-parallel ranks too).
Needs the `serve` extra: pip install 'nvllm[serve]'."""
import socket
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from nvllm.errors import ConfigError
from nvllm.plugins import load_plugins

load_plugins()  # registers every component's config before Hydra composes


@dataclass
class ServeConfig:
    # address to listen on (0.0.0.0: every interface)
    host: str = "127.0.0.1"
    # TCP port; 0 takes any free one (the printed address says which)
    port: int = 8000

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"serve.host must be a host name or IP address such as 127.0.0.1, got {self.host!r}")
        try:
            socket.getaddrinfo(self.host, None)
        except OSError as e:
            raise ConfigError(f"serve.host={self.host!r} does not resolve here ({e}); use 127.0.0.1, "
                              f"0.0.0.0 or a name this machine knows") from None
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port must be an integer in 0..65535 (0: any free port), got {self.port!r}")


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
    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.server.engine_loop import EngineLoop

    engine_loop = EngineLoop(lambda: LLMEngine(cfg))
    engine_loop.start()
    try:
        if engine_loop.engine.random_weights:
            print("nvllm: RANDOM WEIGHTS — this checkpoint was generated for testing; its text means nothing")
        app = build_app(engine_loop, model_name)
        run_server(app, serve_config.host, serve_config.port, f"nvllm.serve: {model_name} ready on")
    finally:
        engine_loop.stop()
    print("nvllm.serve: stopped", flush=True)


if __name__ == "__main__":
    main()
