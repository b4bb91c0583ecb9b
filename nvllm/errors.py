"""Errors every layer may raise; this module imports nothing of nvllm's."""


class ConfigError(ValueError):
    """A configuration that cannot run here; the message names the key, the value and the fix."""
