"""`python -m nvllm.serve`: an OpenAI-compatible HTTP server over one engine, composed by the
same Hydra config as `nvllm.run` (every group and switch) plus `serve.*` (address, API key,
allowed hosts, CORS, request limits, drain timeout; nvllm/config/schema.py ServeConfig):

    python -m nvllm.serve scheduler=chunked serve.port=8000

It prints the address once it is ready; SIGTERM or Ctrl-C drains it (nvllm/server/drain.py), closes
the engine and its tensor-parallel ranks, prints one line and exits 0. A configuration it cannot
run is one line too. Needs the `serve` extra: pip install 'nvllm[serve]'."""
import logging
import multiprocessing
import os
import signal
import sys

import hydra
from omegaconf import DictConfig

from nvllm.unshadow import unshadow

unshadow()  # before any other nvllm import: a directory named nvllm here may hide the package
from nvllm.config import ServeConfig, check_composed, setup
from nvllm.errors import ConfigError

setup()  # the plugins, and every component's config in Hydra's ConfigStore, before Hydra composes
logger = logging.getLogger("nvllm.serve")
# the embedded model's Hugging Face id, which clients may send as `model` besides the option's name
EMBEDDED_HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@hydra.main(config_path="pkg://nvllm.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nvllm.distributed.workers import WorkerError
    from nvllm.models.weights import MissingWeightsError, WeightsError
    from nvllm.registry import UnknownComponentError

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sys.exit("nvllm.serve: python -m nvllm.serve runs one server: drop -m/--multirun")
    try:
        check_composed(cfg)
        serve(cfg, ServeConfig(**cfg.serve), HydraConfig.get().runtime.choices["model"])
    except (ConfigError, WeightsError, MissingWeightsError, UnknownComponentError, WorkerError, FileNotFoundError) as e:
        sys.exit(f"nvllm.serve: {e}")  # the user's to fix, and the message names what: no traceback


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def serve(cfg: DictConfig, serve_config: ServeConfig, model_name: str) -> None:
    """Serve the engine `cfg` composes, under `model_name` (what clients send as `model`)."""
    try:
        from nvllm.server.app import build_app
        from nvllm.server.drain import run_server
    except ImportError as e:
        raise SystemExit(f"nvllm.serve needs the serve extra ({e}): pip install 'nvllm[serve]'") from None
    from nvllm.config import Config, prepare
    from nvllm.engine.llm_engine import LLMEngine
    from nvllm.server.engine_loop import EngineLoop
    from nvllm.server.prompts import Tokenizers

    config = Config.from_cfg(cfg)  # a bad component config is refused here, before the model loads
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # while the model loads, SIGTERM stops it as Ctrl-C does
    resolved = prepare(config)  # every auto decided; the checkpoint's config and tokenizer read, once
    before = set(multiprocessing.active_children())
    tokenizers = Tokenizers(resolved.checkpoint.path, resolved.checkpoint.tokenizer)  # forked before any thread starts
    tokenizer_workers = set(multiprocessing.active_children()) - before
    engine_loop = EngineLoop(lambda: LLMEngine(resolved))
    try:
        engine_loop.start()
    except KeyboardInterrupt as e:  # no waiting for the build, which no signal can cut short: the
        _ignore_signals()          # process leaves it, and tensor-parallel ranks leave when their parent does
        for worker in tokenizer_workers:
            worker.kill()
        logger.info(f"nvllm.serve: stopped by {e.args[0] if e.args else 'Ctrl-C'} while starting")
        exit_now(0)
    except BaseException:
        tokenizers.close()
        raise
    try:
        if engine_loop.engine.random_weights:
            logger.warning("nvllm: RANDOM WEIGHTS — this checkpoint was generated for testing; its text means nothing")
        embedded = None if config.model.path or getattr(config.model, "shape", None) else config.model.embedded
        aliases = tuple(name for name in [EMBEDDED_HUB_IDS.get(embedded)] if name and name != model_name)
        app = build_app(engine_loop, model_name, serve_config, tokenizers, aliases)
        summary = run_server(app, engine_loop, serve_config, f"nvllm.serve: {model_name} ready on")
    except KeyboardInterrupt as e:  # before the server took the signals over
        summary = f"stopped by {e.args[0] if e.args else 'Ctrl-C'}"
    finally:
        _ignore_signals()  # stopping is under way: a late signal must not cut it short with a traceback
        engine_loop.stop()
        tokenizers.close()
    logger.info(f"nvllm.serve: {summary}")


def exit_now(code: int):
    """End the process without the interpreter's teardown, which waits for (or aborts in) a thread still
    loading the model: every line written is flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _ignore_signals():
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    main()
