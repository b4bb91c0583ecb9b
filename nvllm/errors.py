"""Errors every layer may raise; this module imports nothing of nvllm's."""


class ConfigError(ValueError):
    """A configuration that cannot run here; the message names the key, the value and the fix."""


def short_repr(value, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error message never echoes a huge input back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
