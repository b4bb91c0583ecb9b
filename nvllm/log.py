"""Logging: nvllm writes through Python's `logging` (loggers under "nvllm"). Under the CLI Hydra sets
it up (conf/hydra/job_logging/nvllm.yaml): INFO and up on the console as plain lines, warnings and
errors on stderr, and the same records, timestamped, in the run directory's `run.log` (`serve.log`).
From Python, `LLM(...)` gives the "nvllm" logger a handler of its own, vLLM-style, unless the
program configured logging itself; NVLLM_LOGGING_LEVEL (INFO by default) sets its level."""
import logging
import os
import sys


class ConsoleFormatter(logging.Formatter):
    """A plain line for INFO (what a run prints), "nvllm: warning: ..." for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING and not message.startswith("nvllm"):
            message = f"nvllm: {record.levelname.lower()}: {message}"
        return message


class BelowWarning(logging.Filter):
    """For the stdout handler: warnings and errors go to stderr instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def configure_default() -> None:
    """A handler on the "nvllm" logger for programs that use nvllm without configuring logging."""
    logger = logging.getLogger("nvllm")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s", "%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("NVLLM_LOGGING_LEVEL", "INFO").upper())
