"""Moved: the request object is `nvllm.sequence` (every family imports down to it). This alias
goes away in the next release."""
import warnings

from nvllm.sequence import Sequence, SequenceStatus  # noqa: F401

warnings.warn("nvllm.engine.sequence moved to nvllm.sequence; import Sequence from there",
              DeprecationWarning, stacklevel=2)
